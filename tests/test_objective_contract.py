"""The contract every registered objective keeps (a new objective is checked here without listing it):
a finite scalar loss with stats named by stat_keys; micro-batches that sum to the full batch; and
gradient only through the policy logits, never through rewards, reference, posterior or extra-pass inputs."""

import dataclasses
import math

import pytest
import torch

from intro_lite.objectives import BatchInfo, Needs, Objective, ObjectiveInputs, available, get_objective

F64 = torch.float64
REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]  # 3 groups of 4, one flat
GROUPS = [0] * 4 + [1] * 4 + [2] * 4
LENGTHS = [5, 3, 6, 2, 4, 6, 1, 3, 6, 5, 2, 4]
T, V = 8, 7
# Config only where the default is not exactly split-invariant: InTRO's sampled candidates depend on
# each micro-batch's generator, its exact form does not.
CONFIG = {"intro": {"n_candidates": "all"}}
SIDE_INPUTS = ("posterior_logits", "reference_logprobs", "rewards")  # and every float entry of `extra`


def _cfg(objective, **kw):
    """The objective's typed config with ``kw`` over its defaults (None for an objective without keys)."""
    if objective.config is None:
        assert not kw, (objective.name, kw)
        return None
    return objective.config(**kw)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _inputs(seed=0) -> ObjectiveInputs:
    """One batch carrying every input any objective reads (each objective takes what its Needs name)."""
    B = len(REWARDS)
    g = _gen(seed)
    mask = (torch.arange(T).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)).long()
    answer = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        answer[b, n : n + 2] = 1
    positions = torch.full((B, 4), -1, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        pts = sorted({0, max(n // 2, 1), n}) if n > 1 else [0, n]
        positions[b, : len(pts)] = torch.tensor(pts)
    return ObjectiveInputs(
        tokens=torch.randint(0, V, (B, T), generator=g), mask=mask,
        policy_logits=(torch.randn(B, T, V, generator=g, dtype=F64) * 1.5).requires_grad_(True),
        posterior_logits=torch.randn(B, T, V, generator=g, dtype=F64) * 1.5,
        reference_logprobs=-torch.rand(B, T, generator=g, dtype=F64) * 3,
        rewards=torch.tensor(REWARDS, dtype=F64), group_ids=torch.tensor(GROUPS), answer_mask=answer,
        max_completion_length=10,
        extra={"probe_entropy": torch.rand(B, T, generator=g, dtype=F64) * 2, "prefix_positions": positions,
               "prefix_scores": -torch.rand(B, 4, generator=g, dtype=F64) * 4 - 0.5},
    )


def _rows(inputs: ObjectiveInputs, rows, batch) -> ObjectiveInputs:
    fields = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}
    out = {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in fields.items()}
    out["extra"] = {k: v[rows] for k, v in inputs.extra.items()}
    return ObjectiveInputs(**{**out, "batch": batch})


def _case(name):
    objective = get_objective(name)
    config = _cfg(objective, **CONFIG.get(name, {}))
    needs = objective.needs_for(config)
    inputs = _inputs()
    keep = [b for b, r in enumerate(REWARDS) if r > 0 or not needs.kept_only]  # the loop's kept_only filter
    inputs = _rows(inputs, torch.tensor(keep), None)
    return objective, config, needs, dataclasses.replace(inputs, policy_logits=inputs.policy_logits.detach()
                                                         .requires_grad_(True))


@pytest.mark.parametrize("name", available())
def test_finite_scalar_loss_and_declared_stats(name):
    objective, config, _, inputs = _case(name)
    loss, stats = objective.compute(inputs, config, generator=_gen(0))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    assert set(stats) == set(objective.stat_keys)
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values()), stats


@pytest.mark.parametrize("name", available())
def test_micro_batches_sum_to_the_full_batch(name):
    objective, config, needs, inputs = _case(name)
    leaf, n = inputs.policy_logits, inputs.tokens.shape[0]
    full, _ = objective.compute(inputs, config, generator=_gen(0))
    (g_full,) = torch.autograd.grad(full, leaf)
    ids = inputs.group_ids.tolist()
    # Whole groups when the objective needs them, else a cut through the middle of a group.
    cut = ids.index(ids[n // 2]) if needs.whole_groups else n // 2
    batch = BatchInfo(lengths=inputs.mask.bool().sum(1), rewards=inputs.rewards, group_ids=inputs.group_ids)
    total = 0.0
    for rows in (torch.arange(0, cut), torch.arange(cut, n)):
        part, _ = objective.compute(_rows(inputs, rows, batch if needs.batch_totals else None), config,
                                    generator=_gen(0))
        total = total + (part if needs.batch_totals else part * len(rows) / n)  # the loop's weighting
    (g_split,) = torch.autograd.grad(total, leaf)
    torch.testing.assert_close(total, full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_split, g_full, rtol=1e-9, atol=1e-12)
    assert g_full.abs().sum() > 0


@pytest.mark.parametrize("name", available())
def test_gradient_reaches_only_the_policy_logits(name):
    objective, config, _, inputs = _case(name)
    side = {f: getattr(inputs, f).clone().requires_grad_(True) for f in SIDE_INPUTS}
    extra = {k: v.clone().requires_grad_(True) if v.is_floating_point() else v for k, v in inputs.extra.items()}
    assert {k for k, v in extra.items() if v.requires_grad} == {"probe_entropy", "prefix_scores"}
    inputs = dataclasses.replace(inputs, **side, extra=extra)
    loss, _ = objective.compute(inputs, config, generator=_gen(0))
    loss.backward()
    assert inputs.policy_logits.grad is not None and inputs.policy_logits.grad.abs().sum() > 0
    leaves = {**side, **{f"extra[{k!r}]": v for k, v in extra.items() if v.requires_grad}}
    for field, leaf in leaves.items():
        assert leaf.grad is None, field


@pytest.mark.parametrize("name", [n for n in available() if get_objective(n).config is not None
                                  and "beta" in {f.name for f in dataclasses.fields(get_objective(n).config)}])
def test_a_nonzero_beta_and_only_that_asks_for_the_reference_pass(name):
    objective = get_objective(name)
    assert objective.needs_for(objective.config(beta=0.0)).reference is False
    assert objective.needs_for(objective.config(beta=0.1)).reference is True


@pytest.mark.parametrize("name", available())
def test_registered_objectives_are_objectives_with_typed_config(name):
    objective = get_objective(name)
    assert isinstance(objective, Objective) and type(objective) is not Objective
    assert objective.name == name
    config = objective.config
    assert config is None or (dataclasses.is_dataclass(config) and isinstance(config, type)
                              and config.__dataclass_params__.frozen), config
    default = objective.default_config()
    assert (default is None) if config is None else isinstance(default, config)
    if default is not None:
        field = dataclasses.fields(default)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(default, field, getattr(default, field))
    assert isinstance(objective.needs_for(default), Needs)
    assert objective.stat_keys and all(isinstance(k, str) for k in objective.stat_keys)
