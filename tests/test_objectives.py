"""Baseline objectives (intro_lite/objectives/*.py) against brute-force or hand-computed values."""

import dataclasses
import itertools
import math
import statistics

import pytest
import torch

from intro_lite.objectives import (BatchInfo, Needs, Objective, ObjectiveInputs, PassContext, Row, available,
                                   get_objective)
from intro_lite.objectives.common import grpo_advantages
from intro_lite.objectives.gpg import gpg_alpha
from intro_lite.objectives.grpo import DrGrpoConfig, GrpoConfig
from intro_lite.objectives.iapo import IapoConfig, iapo_surprise, normalise_per_sequence
from intro_lite.objectives.latro import LatroConfig, cut_before_marker, rloo_advantages
from intro_lite.objectives.raft import reinforce_rej_advantages
from intro_lite.objectives.repro import (ReproConfig, kendall_tau_prefix, repro_point_scores, reverse_cumsum,
                                         segment_boundaries, select_prefix_points)

F64 = torch.float64
# Every registered objective but InTRO (its own tests: test_intro_loss.py, test_intro_chunked.py).
BASELINES = [n for n in available() if n != "intro"]


def _cfg(objective, **kw):
    """The objective's typed config with ``kw`` over its defaults (None for an objective without keys)."""
    if objective.config is None:
        assert not kw, (objective.name, kw)
        return None
    return objective.config(**kw)


def _needs(name, **kw):
    objective = get_objective(name)
    return objective.needs_for(_cfg(objective, **kw))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _logits(B, T, V, seed, scale=1.5):
    return torch.randn(B, T, V, generator=_gen(seed), dtype=F64) * scale


def _mask(lengths, T):
    return (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()


def _brute_adv(rewards, groups, scale=True, eps=1e-4):
    """Group advantages by Python loops: (r − mean)/(stdev + eps), 0 for flat groups."""
    out = []
    for r, g in zip(rewards, groups):
        members = [rj for rj, gj in zip(rewards, groups) if gj == g]
        if len(set(members)) == 1:
            out.append(0.0)
            continue
        mean = sum(members) / len(members)
        a = r - mean
        if scale:
            a /= statistics.stdev(members) + eps
        out.append(a)
    return out


def _grad(loss, leaf):
    (g,) = torch.autograd.grad(loss, leaf)
    return g


# ------------------------------------------------------------------------------------------------
# Registry and needs


class _CharTokenizer:
    """Text -> one id per character (for the extra passes' text helpers)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 97 for c in text]}


def _uniform_logits(prefixes, suffixes, V=11):
    """PassContext.logits with uniform next-token distributions (entropy log V everywhere)."""
    T = max(len(s) for s in suffixes)
    mask = torch.tensor([[1.0] * len(s) + [0.0] * (T - len(s)) for s in suffixes])
    return torch.zeros(len(prefixes), T, V), torch.tensor([s + [0] * (T - len(s)) for s in suffixes]), mask


def test_registry_and_needs():
    builtin = {"intro", "sft", "grpo", "dr_grpo", "raft++", "reinforce_rej", "gpg", "latro", "iapo", "repro"}
    assert builtin <= set(available())
    assert get_objective("intro").needs == Needs(posterior=True, reference=False, kept_only=True)
    assert not _needs("intro").batch_totals
    for name in BASELINES:
        assert _needs(name).batch_totals, name
        assert not _needs(name).posterior, name

    assert get_objective("grpo").config is GrpoConfig and get_objective("dr_grpo").config is DrGrpoConfig
    assert _needs("grpo").reference and not _needs("grpo", beta=0.0).reference
    assert not _needs("dr_grpo").reference and _needs("dr_grpo", beta=0.1).reference
    assert not _needs("grpo").whole_groups

    raft = _needs("raft++")
    assert raft.kept_only and not raft.reference
    assert not _needs("reinforce_rej").kept_only
    assert _needs("sft").gold_solution

    latro = _needs("latro")
    assert latro.answer_suffix and latro.whole_groups and latro.reference
    assert not _needs("latro", beta=0.0).reference

    # IAPO runs its answer probe (extra_passes) in last_token mode only; next_token needs no extra pass.
    iapo = get_objective("iapo")
    assert not _needs("iapo").reference
    assert _needs("iapo", beta=0.01).reference
    tokens, mask = torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3)
    inputs = ObjectiveInputs(tokens=tokens, mask=mask, policy_logits=torch.zeros(1, 3, 5))
    chunk = [Row(0, 0, [1, 2], [1, 2], [3, 4, 5], 3, 1.0)]
    assert IapoConfig().mode == "next_token"
    assert iapo.extra_passes(inputs, chunk, None, IapoConfig()) == {}  # returns before touching ctx
    probe = iapo.extra_passes(inputs, chunk, PassContext(_CharTokenizer(), [], _uniform_logits),
                              IapoConfig(mode="last_token"))
    assert set(probe) == {"probe_entropy"} and probe["probe_entropy"].shape == tokens.shape
    torch.testing.assert_close(probe["probe_entropy"], torch.full((1, 3), math.log(11)))
    assert inputs.extra == {}  # returned, not written into the inputs

    # RePro scores its own prefixes (extra_passes) and needs whole groups in a micro-batch.
    repro = _needs("repro")
    assert repro.whole_groups and not repro.reference
    assert type(get_objective("repro")).extra_passes is not Objective.extra_passes


# ------------------------------------------------------------------------------------------------
# A generic batch per objective: 3 prompt groups of 4 rows, one flat group.

REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
GROUPS = [0] * 4 + [1] * 4 + [2] * 4
LENGTHS = [5, 3, 6, 2, 4, 6, 1, 3, 6, 5, 2, 4]
T, V = 8, 7


def _build(name, seed=0, off_policy=True):
    """(ObjectiveInputs with a leaf policy_logits, config) for `name`."""
    B = len(REWARDS)
    policy = _logits(B, T, V, seed).requires_grad_(True)
    tokens = torch.randint(0, V, (B, T), generator=_gen(seed + 1))
    mask = _mask(LENGTHS, T)
    fields = dict(tokens=tokens, mask=mask, policy_logits=policy)
    config = {}
    if name != "sft":
        fields.update(rewards=torch.tensor(REWARDS, dtype=F64), group_ids=torch.tensor(GROUPS))
    if off_policy and name in ("grpo", "dr_grpo", "raft++", "reinforce_rej", "iapo", "repro"):
        with torch.no_grad():
            own = policy.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        fields["sampled_logprobs"] = own + 0.3 * torch.randn(B, T, generator=_gen(seed + 2), dtype=F64)
    if name in ("grpo", "dr_grpo"):
        fields["reference_logprobs"] = -torch.rand(B, T, generator=_gen(seed + 3), dtype=F64) * 3
        fields["max_completion_length"] = 10
        config = {"beta": 0.04} if name == "grpo" else {"beta": 0.02}
    if name == "latro":
        answer = torch.zeros(B, T, dtype=torch.long)
        for b, n in enumerate(LENGTHS):
            answer[b, n : n + 2] = 1
        fields["answer_mask"] = answer
        fields["reference_logprobs"] = -torch.rand(B, T, generator=_gen(seed + 3), dtype=F64) * 3
    if name == "iapo":
        fields["extra"] = {"probe_entropy": torch.rand(B, T, generator=_gen(seed + 4), dtype=F64) * 2}
    if name == "repro":
        P = 5
        pos = torch.full((B, P), -1, dtype=torch.long)
        g = _gen(seed + 5)
        for b, n in enumerate(LENGTHS):
            inner = sorted(torch.randperm(n - 1, generator=g)[: min(2, n - 1)].add(1).tolist()) if n > 1 else []
            pts = [0, *inner, n]
            pos[b, : len(pts)] = torch.tensor(pts)
        scores = -torch.rand(B, P, generator=g, dtype=F64) * 4 - 0.5
        fields["extra"] = {"prefix_positions": pos, "prefix_scores": scores}
    return ObjectiveInputs(**fields), config


def _rows(inputs: ObjectiveInputs, rows, batch):
    out = {}
    for f in dataclasses.fields(inputs):
        v = getattr(inputs, f.name)
        out[f.name] = v[rows] if isinstance(v, torch.Tensor) else v
    out["extra"] = {k: v[rows] for k, v in inputs.extra.items()}
    out["batch"] = batch
    return ObjectiveInputs(**out)


def _batch_of(inputs: ObjectiveInputs) -> BatchInfo:
    lengths = inputs.mask.bool().sum(1)
    return BatchInfo(lengths=lengths, rewards=inputs.rewards, group_ids=inputs.group_ids)


CASES = [
    ("sft", {}), ("grpo", {"loss_aggregation": "grpo"}), ("grpo", {"loss_aggregation": "bnpo"}),
    ("grpo", {"loss_aggregation": "dr_grpo"}), ("dr_grpo", {}), ("raft++", {}), ("reinforce_rej", {}),
    ("gpg", {}), ("latro", {}), ("iapo", {"mode": "next_token"}), ("iapo", {"mode": "last_token"}), ("repro", {}),
]
# A registered objective without a case above is checked with its default config: none skips these tests.
CASES += [(name, {}) for name in BASELINES if name not in {n for n, _ in CASES}]


@pytest.mark.parametrize("name, overrides", CASES)
def test_micro_batch_split_matches_full_batch(name, overrides):
    inputs, config = _build(name)
    objective = get_objective(name)
    config = _cfg(objective, **{**config, **overrides})
    leaf = inputs.policy_logits
    full, stats = objective.compute(inputs, config, generator=_gen(0))
    g_full = _grad(full, leaf)
    assert set(stats) == set(objective.stat_keys)
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert g_full.abs().sum() > 0

    # Reward-only advantages may split a group (rows 4-7 are one group); LaTRO/RePro split between groups.
    split = 8 if objective.needs_for(config).whole_groups else 6
    batch = _batch_of(inputs)
    total = 0.0
    for rows in (torch.arange(0, split), torch.arange(split, len(REWARDS))):
        part, part_stats = objective.compute(_rows(inputs, rows, batch), config, generator=_gen(0))
        assert set(part_stats) == set(objective.stat_keys)
        total = total + part
    g_split = _grad(total, leaf)
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_split, g_full, rtol=1e-10, atol=1e-12)

    # Power: the naive alternative (each half normalised by itself) is a different loss.
    naive = sum(objective.compute(_rows(inputs, rows, None), config)[0]
                for rows in (torch.arange(0, split), torch.arange(split, len(REWARDS))))
    assert not torch.allclose(naive, full)


WHOLE_GROUPS = [name for name in BASELINES if _needs(name).whole_groups]  # latro, repro (test_registry_and_needs)


@pytest.mark.parametrize("name", WHOLE_GROUPS)
def test_whole_groups_are_enforced(name):
    inputs, config = _build(name)
    objective = get_objective(name)
    with pytest.raises(ValueError, match="whole_groups"):
        objective.compute(_rows(inputs, torch.arange(0, 6), _batch_of(inputs)), _cfg(objective, **config))


@pytest.mark.parametrize("name, overrides", CASES)
def test_padding_is_never_read(name, overrides):
    inputs, config = _build(name)
    objective = get_objective(name)
    config = _cfg(objective, **{**config, **overrides})
    loss, stats = objective.compute(inputs, config)
    grad = _grad(loss, inputs.policy_logits)
    used = inputs.mask.bool()
    if inputs.answer_mask is not None:
        used = used | inputs.answer_mask.bool()
    off = ~used
    assert torch.all(grad[off] == 0)
    assert grad[used].abs().sum() > 0

    g = _gen(123)
    garbage = dict(
        policy_logits=torch.where(off[..., None], torch.randn(inputs.policy_logits.shape, generator=g, dtype=F64) * 50,
                                  inputs.policy_logits.detach()).requires_grad_(True),
        tokens=torch.where(off, torch.full_like(inputs.tokens, -100), inputs.tokens),
    )
    for field in ("sampled_logprobs", "reference_logprobs"):
        value = getattr(inputs, field)
        if value is not None:
            garbage[field] = torch.where(off, torch.full_like(value, float("nan")), value)
    # Per-token extra-pass inputs ([B, T] floats: IAPO's probe_entropy) are garbage off the mask too.
    garbage["extra"] = {k: torch.where(off, torch.full_like(v, float("nan")), v)
                        if v.shape == off.shape and v.is_floating_point() else v for k, v in inputs.extra.items()}
    if name == "iapo":
        assert torch.isnan(garbage["extra"]["probe_entropy"]).any()
    changed = dataclasses.replace(inputs, **garbage)
    loss2, stats2 = objective.compute(changed, config)
    grad2 = _grad(loss2, changed.policy_logits)
    torch.testing.assert_close(loss2, loss.detach(), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(grad2, grad, rtol=1e-12, atol=1e-14)
    assert stats2 == pytest.approx(stats, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("name, overrides", CASES)
def test_only_policy_logits_receive_gradient(name, overrides):
    """Rewards, old/reference log-probs and the extra passes' inputs (probe entropies, prefix scores)
    are fixed inputs (stop-gradient)."""
    inputs, config = _build(name)
    side = {}
    for field in ("rewards", "sampled_logprobs", "reference_logprobs"):
        value = getattr(inputs, field)
        if value is not None:
            side[field] = value.clone().requires_grad_(True)
    extra = {k: v.clone().requires_grad_(True) if v.is_floating_point() else v for k, v in inputs.extra.items()}
    inputs = dataclasses.replace(inputs, **side, extra=extra)
    objective = get_objective(name)
    loss, _ = objective.compute(inputs, _cfg(objective, **{**config, **overrides}))
    loss.backward()
    assert inputs.policy_logits.grad is not None
    leaves = {**side, **{f"extra[{k!r}]": v for k, v in extra.items() if v.requires_grad}}
    for field, leaf in leaves.items():
        assert leaf.grad is None, field


# ------------------------------------------------------------------------------------------------
# SFT


def test_sft_token_mean_by_brute_force():
    logits = _logits(3, 4, 5, seed=1).requires_grad_(True)
    tokens = torch.randint(0, 5, (3, 4), generator=_gen(2))
    mask = _mask([4, 2, 1], 4)
    loss, stats = get_objective("sft").compute(ObjectiveInputs(tokens=tokens, mask=mask, policy_logits=logits), None)
    ref = 0.0
    for b, t in itertools.product(range(3), range(4)):
        if mask[b, t]:
            ref = ref - logits[b, t].log_softmax(-1)[tokens[b, t]]
    ref = ref / 7
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(_grad(loss, logits), _grad(ref, logits))
    assert stats == {"nll": pytest.approx(ref.item()), "n_tokens": 7.0}


# ------------------------------------------------------------------------------------------------
# Group advantages


def test_group_advantages_by_hand():
    r = torch.tensor(REWARDS, dtype=F64)
    g = torch.tensor(GROUPS)
    adv, flat = grpo_advantages(r, g)
    s0, s2 = math.sqrt(1 / 3), 0.5  # Bessel stdev of [1,0,0,1] and [0,1,0,0]
    expected = [0.5 / (s0 + 1e-4), -0.5 / (s0 + 1e-4), -0.5 / (s0 + 1e-4), 0.5 / (s0 + 1e-4)] + [0.0] * 4 + [
        -0.25 / (s2 + 1e-4), 0.75 / (s2 + 1e-4), -0.25 / (s2 + 1e-4), -0.25 / (s2 + 1e-4)]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=F64))
    assert flat.tolist() == [False] * 4 + [True] * 4 + [False] * 4
    torch.testing.assert_close(adv, torch.tensor(_brute_adv(REWARDS, GROUPS), dtype=F64))

    dr, _ = grpo_advantages(r, g, scale_rewards=False)  # Dr. GRPO / GPG: no std
    expected_dr = [0.5, -0.5, -0.5, 0.5] + [0.0] * 4 + [-0.25, 0.75, -0.25, -0.25]
    torch.testing.assert_close(dr, torch.tensor(expected_dr, dtype=F64))

    # A micro-batch holding part of groups 0 and 2 looks their statistics up in the batch info.
    rows = torch.tensor([3, 9])
    part, _ = grpo_advantages(r[rows], g[rows], batch=BatchInfo(lengths=torch.ones(12), rewards=r, group_ids=g))
    torch.testing.assert_close(part, adv[rows])
    alone, _ = grpo_advantages(r[rows], g[rows])  # without it each row is its own (flat) group
    assert torch.all(alone == 0)


def test_group_ids_need_not_be_contiguous_or_sorted():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    g = torch.tensor([7, 3, 3, 7, 7, 3])
    adv, _ = grpo_advantages(r, g)
    torch.testing.assert_close(adv, torch.tensor(_brute_adv(r.tolist(), g.tolist()), dtype=torch.float32))


def test_missing_group_in_batch_info_is_an_error():
    r, g = torch.tensor([1.0, 0.0]), torch.tensor([0, 5])
    with pytest.raises(ValueError, match="group id"):
        grpo_advantages(r, g, batch=BatchInfo(lengths=torch.ones(2), rewards=r, group_ids=torch.tensor([0, 0])))


# ------------------------------------------------------------------------------------------------
# GRPO: aggregation, clipping, KL


def _brute_grpo(leaf, tokens, mask, rewards, groups, *, old=None, ref=None, beta=0.0, eps=0.2, eps_high=None,
                mode="grpo", max_len=None, scale=True):
    eps_high = eps if eps_high is None else eps_high
    adv = _brute_adv(rewards, groups, scale=scale)
    logp = leaf.log_softmax(-1)
    B, T = tokens.shape
    seq_terms, token_sum, n_tokens = [], 0.0, 0
    for b in range(B):
        row, n = 0.0, 0
        for t in range(T):
            if not mask[b, t]:
                continue
            lp = logp[b, t, tokens[b, t]]
            o = lp.detach() if old is None else old[b, t]
            rho = torch.exp(lp - o)
            a = adv[b]
            obj = torch.minimum(rho * a, torch.clamp(rho, 1 - eps, 1 + eps_high) * a)
            term = -obj
            if beta:
                d = ref[b, t] - lp
                term = term + beta * (torch.exp(d) - d - 1)
            row, n = row + term, n + 1
        seq_terms.append(row / max(n, 1))
        token_sum, n_tokens = token_sum + row, n_tokens + n
    if mode == "grpo":
        return sum(seq_terms) / B
    if mode == "bnpo":
        return token_sum / n_tokens
    return token_sum / (B * max_len)


@pytest.mark.parametrize("mode", ["grpo", "bnpo", "dr_grpo"])
def test_grpo_aggregation_modes(mode):
    rewards, groups = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0], [0, 0, 0, 1, 1, 1]
    lengths = [4, 1, 3, 2, 4, 3]
    leaf = _logits(6, 4, 5, seed=3).requires_grad_(True)
    tokens = torch.randint(0, 5, (6, 4), generator=_gen(4))
    mask = _mask(lengths, 4)
    inputs = ObjectiveInputs(tokens=tokens, mask=mask, policy_logits=leaf, rewards=torch.tensor(rewards, dtype=F64),
                             group_ids=torch.tensor(groups), max_completion_length=6)
    loss, stats = get_objective("grpo").compute(inputs, GrpoConfig(beta=0.0, loss_aggregation=mode))
    ref = _brute_grpo(leaf, tokens, mask, rewards, groups, mode=mode, max_len=6)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(_grad(loss, leaf), _grad(ref, leaf))

    # ρ = 1 in value: the loss is −(aggregated advantage) by hand.
    adv = _brute_adv(rewards, groups)
    hand = {
        "grpo": -sum(adv) / 6,
        "bnpo": -sum(a * n for a, n in zip(adv, lengths)) / sum(lengths),
        "dr_grpo": -sum(a * n for a, n in zip(adv, lengths)) / (6 * 6),
    }[mode]
    assert loss.item() == pytest.approx(hand, rel=1e-12, abs=1e-15)
    assert stats["clip_frac"] == 0.0 and stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["n_tokens"] == sum(lengths) and stats["n_sequences"] == 6


def test_ratio_one_keeps_policy_gradient():
    """π_old = sg(π_θ): the gradient is −A_i/(|o_i|·B)·(e_z − p) per token, not zero."""
    leaf = _logits(2, 3, 4, seed=5).requires_grad_(True)
    tokens = torch.tensor([[1, 2, 0], [3, 3, 1]])
    mask = _mask([3, 2], 3)
    inputs = ObjectiveInputs(tokens=tokens, mask=mask, policy_logits=leaf, rewards=torch.tensor([1.0, 0.0], dtype=F64),
                             group_ids=torch.tensor([0, 0]))
    loss, _ = get_objective("grpo").compute(inputs, GrpoConfig(beta=0.0))
    grad = _grad(loss, leaf)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    p = leaf.detach().softmax(-1)
    onehot = torch.nn.functional.one_hot(tokens, 4).to(F64)
    expected = -torch.tensor([a / 3, -a / 2], dtype=F64).view(2, 1, 1) / 2 * (onehot - p) * mask.unsqueeze(-1)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("eps_high, clipped_high", [(None, True), (0.6, False)])
def test_ppo_clip_region_has_zero_gradient(eps_high, clipped_high):
    rhos = torch.tensor([1.5, 0.5, 1.1, 0.9], dtype=F64)
    leaf = _logits(2, 4, 5, seed=6).requires_grad_(True)
    tokens = torch.randint(0, 5, (2, 4), generator=_gen(7))
    mask = torch.ones(2, 4, dtype=torch.long)
    with torch.no_grad():
        own = leaf.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    old = own - rhos.log()  # ρ = π_θ/π_old = rhos in value
    rewards, groups = [1.0, 0.0], [0, 0]  # A > 0 on row 0, A < 0 on row 1
    inputs = ObjectiveInputs(tokens=tokens, mask=mask, policy_logits=leaf, rewards=torch.tensor(rewards, dtype=F64),
                             group_ids=torch.tensor(groups), sampled_logprobs=old)
    config = GrpoConfig(beta=0.0, epsilon=0.2, epsilon_high=eps_high)
    loss, stats = get_objective("grpo").compute(inputs, config)
    grad = _grad(loss, leaf)
    ref = _brute_grpo(leaf, tokens, mask, rewards, groups, old=old, eps=0.2, eps_high=eps_high)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, _grad(ref, leaf))

    zero = grad.abs().sum(-1) == 0
    # A > 0: ρ = 1.5 > 1 + ε_high is clipped (unless ε_high = 0.6); ρ = 0.5 is not (min picks ρ·A).
    # A < 0: ρ = 0.5 < 1 − ε is clipped; ρ = 1.5 is not (pessimistic branch keeps the gradient).
    assert zero.tolist() == [[clipped_high, False, False, False], [False, True, False, False]]
    assert stats["clip_frac"] == pytest.approx((1 + clipped_high) / 8)
    assert stats["ratio_mean"] == pytest.approx(1.0)


def test_k3_kl_value_gradient_and_no_grad_to_reference():
    leaf = _logits(2, 3, 5, seed=8).requires_grad_(True)
    ref_logits = _logits(2, 3, 5, seed=9).requires_grad_(True)
    tokens = torch.randint(0, 5, (2, 3), generator=_gen(10))
    mask = _mask([3, 2], 3)
    base = dict(tokens=tokens, mask=mask, policy_logits=leaf, rewards=torch.tensor([1.0, 0.0], dtype=F64),
                group_ids=torch.tensor([0, 0]))
    beta = 0.04
    ref_lp = ref_logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # carries a graph
    with_ref, stats = get_objective("grpo").compute(ObjectiveInputs(**base, reference_logprobs=ref_lp),
                                                    GrpoConfig(beta=beta))
    without, _ = get_objective("grpo").compute(ObjectiveInputs(**base), GrpoConfig(beta=0.0))

    lp = leaf.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    lr = ref_logits.detach().log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    k3 = torch.exp(lr - lp) - (lr - lp) - 1  # π_ref/π_θ − log(π_ref/π_θ) − 1
    seq_mean = (k3 * mask).sum(1) / mask.sum(1)
    expected_kl_term = beta * seq_mean.mean()
    torch.testing.assert_close(with_ref - without, expected_kl_term)
    assert stats["kl"] == pytest.approx(k3[mask.bool()].mean().item())
    assert stats["kl"] > 0

    g_with = torch.autograd.grad(with_ref, leaf, retain_graph=True)[0]
    g_without = _grad(without, leaf)
    # d k3/d lp = 1 − π_ref/π_θ, chained through log-softmax.
    p = leaf.detach().softmax(-1)
    onehot = torch.nn.functional.one_hot(tokens, 5).to(F64)
    dk = (1 - torch.exp(lr - lp.detach())) * mask / mask.sum(1, keepdim=True) / 2
    torch.testing.assert_close(g_with - g_without, beta * dk.unsqueeze(-1) * (onehot - p))

    with_ref.backward()
    assert ref_logits.grad is None  # the reference is a fixed target

    # Detached reference log-probs give the same loss.
    same, _ = get_objective("grpo").compute(ObjectiveInputs(**base, reference_logprobs=lr), GrpoConfig(beta=beta))
    torch.testing.assert_close(same, with_ref.detach())
    with pytest.raises(ValueError, match="reference"):
        get_objective("grpo").compute(ObjectiveInputs(**base), GrpoConfig(beta=beta))


def test_dr_grpo_is_grpo_without_std_with_dr_aggregation():
    inputs, _ = _build("grpo", off_policy=False)
    inputs = dataclasses.replace(inputs, reference_logprobs=None)
    leaf = inputs.policy_logits
    dr, _ = get_objective("dr_grpo").compute(inputs, None)
    ref = _brute_grpo(leaf, inputs.tokens, inputs.mask, REWARDS, GROUPS, mode="dr_grpo", max_len=10, scale=False)
    torch.testing.assert_close(dr, ref)
    torch.testing.assert_close(_grad(dr, leaf), _grad(ref, leaf))
    with pytest.raises(ValueError, match="max_completion_length"):
        get_objective("dr_grpo").compute(dataclasses.replace(inputs, max_completion_length=None), None)
    with pytest.raises(TypeError, match="bta"):  # an unknown config key
        get_objective("grpo").config(bta=0.1)


def test_all_flat_groups_give_connected_zero():
    inputs, _ = _build("grpo", off_policy=False)
    inputs = dataclasses.replace(inputs, rewards=torch.ones(12, dtype=F64), reference_logprobs=None)
    loss, stats = get_objective("grpo").compute(inputs, GrpoConfig(beta=0.0))
    assert loss.item() == 0.0 and loss.requires_grad
    assert torch.all(_grad(loss, inputs.policy_logits) == 0)
    assert stats["zero_var_frac"] == 1.0


# ------------------------------------------------------------------------------------------------
# RAFT++ and Reinforce-Rej


@pytest.mark.parametrize("wrong", [0.0, -1.0])
def test_raft_pp_trains_only_correct_samples(wrong):
    leaf = _logits(4, 3, 5, seed=11).requires_grad_(True)
    tokens = torch.randint(0, 5, (4, 3), generator=_gen(12))
    lengths = [3, 2, 1, 3]
    mask = _mask(lengths, 3)
    rewards = torch.tensor([1.0, wrong, 1.0, wrong], dtype=F64)
    loss, stats = get_objective("raft++").compute(
        ObjectiveInputs(tokens=tokens, mask=mask, policy_logits=leaf, rewards=rewards), None)
    grad = _grad(loss, leaf)
    assert loss.item() == pytest.approx(-1.0)  # A = 1, ρ = 1: token mean of −1 over correct tokens
    assert torch.all(grad[1] == 0) and torch.all(grad[3] == 0)
    n_correct = lengths[0] + lengths[2]
    p = leaf.detach().softmax(-1)
    onehot = torch.nn.functional.one_hot(tokens, 5).to(F64)
    expected = -(onehot - p) * mask.unsqueeze(-1) / n_correct
    torch.testing.assert_close(grad[[0, 2]], expected[[0, 2]])
    assert stats["kept_frac"] == 0.5 and stats["n_tokens"] == n_correct and stats["n_sequences"] == 2

    # The loop filters with kept_only: the kept rows alone give the same loss.
    kept, _ = get_objective("raft++").compute(ObjectiveInputs(
        tokens=tokens[[0, 2]], mask=mask[[0, 2]], policy_logits=leaf[[0, 2]], rewards=rewards[[0, 2]]), None)
    torch.testing.assert_close(kept, loss.detach())

    none, stats = get_objective("raft++").compute(ObjectiveInputs(
        tokens=tokens, mask=mask, policy_logits=leaf, rewards=torch.zeros(4, dtype=F64)), None)
    assert none.item() == 0.0 and none.requires_grad and stats["kept_frac"] == 0.0


def test_reinforce_rej_signs_and_dropped_groups():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    g = torch.tensor(GROUPS)
    adv, kept = reinforce_rej_advantages(r, g)
    assert adv.tolist() == [1.0, -1.0, -1.0, -1.0] + [0.0] * 8
    assert kept.tolist() == [True] * 4 + [False] * 8

    inputs, _ = _build("reinforce_rej", off_policy=False)
    inputs = dataclasses.replace(inputs, rewards=r.to(F64))
    loss, stats = get_objective("reinforce_rej").compute(inputs, None)
    grad = _grad(loss, inputs.policy_logits)
    signs = [1, -1, -1, -1]
    hand = -sum(s * n for s, n in zip(signs, LENGTHS[:4])) / sum(LENGTHS[:4])
    assert loss.item() == pytest.approx(hand)
    assert torch.all(grad[4:] == 0) and grad[:4].abs().sum() > 0
    assert stats["dropped_frac"] == pytest.approx(8 / 12)


# ------------------------------------------------------------------------------------------------
# GPG


def test_gpg_alpha_and_loss_by_brute_force():
    r, g = torch.tensor(REWARDS), torch.tensor(GROUPS)
    assert gpg_alpha(r, g) == pytest.approx(3 / (3 - 1))  # B = 3 groups, M = 1 flat
    assert gpg_alpha(torch.ones(12), g) == 1.0
    assert gpg_alpha(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1])) == pytest.approx(2.0)

    inputs, _ = _build("gpg")
    leaf = inputs.policy_logits
    loss, stats = get_objective("gpg").compute(inputs, None)
    adv = _brute_adv(REWARDS, GROUPS, scale=False)
    logp = leaf.log_softmax(-1)
    ref = 0.0
    for b in range(12):
        for t in range(LENGTHS[b]):
            ref = ref + adv[b] * logp[b, t, inputs.tokens[b, t]]
    ref = -(1.5 / sum(LENGTHS)) * ref
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(_grad(loss, leaf), _grad(ref, leaf))
    assert stats["alpha"] == pytest.approx(1.5) and stats["zero_var_frac"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------
# LaTRO


def test_rloo_by_hand():
    a = rloo_advantages(torch.tensor([1.0, 2.0, 4.0, 5.0]), torch.tensor([0, 0, 0, 1]))
    assert a.tolist() == [1 - 3, 2 - 2.5, 4 - 1.5, 0.0]


def _brute_latro(leaf, tokens, mask, answer, ref, groups, beta, detach=True):
    logp = leaf.log_softmax(-1)
    B, T = tokens.shape
    lp_z, lp_y, r = [], [], []
    for b in range(B):
        z = sum(logp[b, t, tokens[b, t]] for t in range(T) if mask[b, t])
        y = sum(logp[b, t, tokens[b, t]] for t in range(T) if answer[b, t])
        z0 = sum(ref[b, t] for t in range(T) if mask[b, t])
        lp_z.append(z)
        lp_y.append(y)
        reward = y - beta * (z - z0)
        r.append(reward.detach() if detach else reward)
    loss = 0.0
    for k in range(B):
        others = [r[j] for j in range(B) if groups[j] == groups[k] and j != k]
        a = r[k] - sum(others) / len(others)
        loss = loss - a * lp_z[k] - lp_y[k]
    return loss / B


def test_latro_by_brute_force_with_detached_reward():
    inputs, config = _build("latro")
    leaf = inputs.policy_logits
    loss, stats = get_objective("latro").compute(inputs, LatroConfig(beta=0.05))
    ref = _brute_latro(leaf, inputs.tokens, inputs.mask, inputs.answer_mask, inputs.reference_logprobs, GROUPS, 0.05)
    torch.testing.assert_close(loss, ref)
    grad = _grad(loss, leaf)
    torch.testing.assert_close(grad, _grad(ref, leaf))
    # Power: letting gradient through the reward would be a different update.
    undetached = _brute_latro(leaf, inputs.tokens, inputs.mask, inputs.answer_mask, inputs.reference_logprobs,
                              GROUPS, 0.05, detach=False)
    assert (grad - _grad(undetached, leaf)).abs().max() > 1e-3
    assert stats["n_sequences"] == 12 and stats["rationale_kl"] != 0.0

    # β = 0 needs no reference at all.
    no_ref = dataclasses.replace(inputs, reference_logprobs=None)
    loss0, stats0 = get_objective("latro").compute(no_ref, LatroConfig(beta=0.0))
    ref0 = _brute_latro(leaf, inputs.tokens, inputs.mask, inputs.answer_mask, inputs.reference_logprobs, GROUPS, 0.0)
    torch.testing.assert_close(loss0, ref0)
    assert stats0["rationale_kl"] == 0.0
    with pytest.raises(ValueError, match="reference"):
        get_objective("latro").compute(no_ref, LatroConfig(beta=0.05))


def test_cut_before_marker():
    assert cut_before_marker(["x", " = 2", ". The", " answer", " is", " 5"]) == 2
    assert cut_before_marker(["a", "b", "\\box", "ed{5}"]) == 2
    assert cut_before_marker(["no", " marker"]) == 2


# ------------------------------------------------------------------------------------------------
# IAPO


def test_iapo_surprise_zero_padded_ends():
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    s = iapo_surprise(h, mask)
    # s_t = ½(H_t + H_{t−1}) − H_{t+1}; H_{−1} = 0, H_4 (padding) counts as 0.
    assert s.tolist() == [[0.5 * 1 - 2, 0.5 * 3 - 3, 0.5 * 5 - 4, 0.5 * 7 - 0, 0.0]]


def test_iapo_normalisation_is_the_intended_form_not_the_precedence_bug():
    x = torch.tensor([[1.0, 2.0, 4.0, 8.0, 100.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    got = normalise_per_sequence(x, mask)
    vals = [1.0, 2.0, 4.0, 8.0]
    mean, sd = statistics.mean(vals), statistics.stdev(vals)
    z = [(v - mean) / (sd + 1e-8) for v in vals]
    norm = math.sqrt(sum(v * v for v in z))
    expected = [v / (norm + 1e-8) for v in z] + [0.0]
    torch.testing.assert_close(got, torch.tensor([expected], dtype=F64))
    assert got[0, :4].sum().abs() < 1e-12 and got[0, :4].norm().item() == pytest.approx(1.0)
    # The authors' code computes x − mean/std (precedence): a different vector, even after L2 normalising.
    buggy = [v - mean / (sd + 1e-8) for v in vals]
    buggy_norm = math.sqrt(sum(v * v for v in buggy))
    assert max(abs(a - b / buggy_norm) for a, b in zip(expected, buggy)) > 0.1


@pytest.mark.parametrize("mode", ["next_token", "last_token"])
def test_iapo_token_advantages_sign_and_gradient(mode):
    B, Tn, Vn = 4, 5, 6
    leaf = _logits(B, Tn, Vn, seed=13).requires_grad_(True)
    tokens = torch.randint(0, Vn, (B, Tn), generator=_gen(14))
    lengths = [5, 4, 3, 5]
    mask = _mask(lengths, Tn)
    rewards = [1.0, 0.0, 1.0, 0.0]
    probe = torch.rand(B, Tn, generator=_gen(15), dtype=F64) * 2
    lam_s, lam_c = 0.3, 0.2  # large enough to matter in the check
    inputs = ObjectiveInputs(tokens=tokens, mask=mask, policy_logits=leaf, rewards=torch.tensor(rewards, dtype=F64),
                             group_ids=torch.zeros(B, dtype=torch.long), extra={"probe_entropy": probe})
    loss, stats = get_objective("iapo").compute(inputs, IapoConfig(mode=mode, lambda_s=lam_s, lambda_c=lam_c))

    # Brute force, row by row, with everything built from detached logits.
    with torch.no_grad():
        p = leaf.softmax(-1)
        ent = -(p * p.log()).sum(-1)
    grpo = _brute_adv(rewards, [0] * 4)
    adv_rows = []
    for b in range(B):
        n = lengths[b]
        H = (probe[b] if mode == "last_token" else ent[b])[:n].tolist()
        C = ent[b, :n].tolist()
        s = [0.5 * (H[t] + (H[t - 1] if t > 0 else 0.0)) - (H[t + 1] if t + 1 < n else 0.0) for t in range(n)]

        def unit(v):
            m, sd = statistics.mean(v), statistics.stdev(v)
            z = [(x - m) / (sd + 1e-8) for x in v]
            nz = math.sqrt(sum(x * x for x in z))
            return [x / (nz + 1e-8) for x in z]

        s_hat, c_hat = unit(s), unit(C)
        sign = 1.0 if rewards[b] > 0 else 0.0  # sign(0) = 0: wrong rationales get no confidence term
        adv_rows.append([grpo[b] + lam_s * s_hat[t] - sign * lam_c * c_hat[t] for t in range(n)])
    logp = leaf.log_softmax(-1)
    ref = 0.0
    for b in range(B):
        for t in range(lengths[b]):
            lp = logp[b, t, tokens[b, t]]
            ref = ref - adv_rows[b][t] * torch.exp(lp - lp.detach())
    ref = ref / sum(lengths)  # bnpo
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(_grad(loss, leaf), _grad(ref, leaf))  # no gradient through the entropies
    assert stats["confidence_mean"] == pytest.approx(ent[mask.bool()].mean().item())


def test_iapo_clip_is_asymmetric():
    leaf = _logits(2, 1, 4, seed=16).requires_grad_(True)
    tokens = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        own = leaf.log_softmax(-1)[:, :, 0]
    inputs = ObjectiveInputs(tokens=tokens, mask=torch.ones(2, 1), policy_logits=leaf,
                             rewards=torch.tensor([1.0, 0.0], dtype=F64), group_ids=torch.tensor([0, 0]),
                             sampled_logprobs=own - math.log(1.25))  # ρ = 1.25: inside 1 + 0.28, outside 1 + 0.2
    _, stats = get_objective("iapo").compute(inputs, None)
    assert stats["clip_frac"] == 0.0
    _, stats = get_objective("iapo").compute(inputs, IapoConfig(epsilon_high=0.2))
    assert stats["clip_frac"] == 0.5


def test_iapo_last_token_needs_probe():
    inputs, _ = _build("iapo")
    with pytest.raises(ValueError, match="probe_entropy"):
        get_objective("iapo").compute(dataclasses.replace(inputs, extra={}), IapoConfig(mode="last_token"))


# ------------------------------------------------------------------------------------------------
# RePro


def _brute_tau_b(values):
    n = len(values)
    c = d = ties = 0
    for a, b in itertools.combinations(range(n), 2):
        if values[b] > values[a]:
            c += 1
        elif values[b] < values[a]:
            d += 1
        else:
            ties += 1
    n0 = n * (n - 1) / 2
    denom = math.sqrt(n0 * (n0 - ties))
    return (c - d) / denom if denom > 0 else 0.0


def test_kendall_tau_by_hand_and_brute_force():
    j = torch.tensor([[-4.0, -3.0, -3.5, -1.0], [-2.0, -1.0, -1.0, -9.0]], dtype=F64)
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    tau = kendall_tau_prefix(j, valid)
    torch.testing.assert_close(tau[0], torch.tensor([0.0, 1.0, 1 / 3, 4 / 6], dtype=F64))
    # Row 1: a tie at j = 2 (τ_b = 2/sqrt(3·2)); the padded point is ignored.
    torch.testing.assert_close(tau[1], torch.tensor([0.0, 1.0, 2 / math.sqrt(6), 0.0], dtype=F64))

    vals = torch.randn(6, 7, generator=_gen(17), dtype=F64).round(decimals=0)  # rounding makes ties
    tau = kendall_tau_prefix(vals, torch.ones(6, 7))
    for b, k in itertools.product(range(6), range(7)):
        assert tau[b, k].item() == pytest.approx(_brute_tau_b(vals[b, : k + 1].tolist()), abs=1e-12)


def test_repro_magnitude_and_stability_by_hand():
    j = torch.tensor([[-4.0, -3.0, -3.5, -1.0]], dtype=F64)
    s, magn, stab, tau = repro_point_scores(j, torch.ones(1, 4), w=0.5)
    deltas = [0.0, 0.25, 0.125, 0.75]  # (J̃ − J_b)/|J_b|
    exp_magn = [math.tanh(d - 1) + 1 for d in deltas]
    exp_stab = [(t + 1) / 2 for t in [0.0, 1.0, 1 / 3, 4 / 6]]
    torch.testing.assert_close(magn[0], torch.tensor(exp_magn, dtype=F64))
    torch.testing.assert_close(stab[0], torch.tensor(exp_stab, dtype=F64))
    torch.testing.assert_close(s[0], torch.tensor([0.5 * a + 0.5 * b for a, b in zip(exp_magn, exp_stab)], dtype=F64))
    s_w, _, _, _ = repro_point_scores(j, torch.ones(1, 4), w=0.2)
    torch.testing.assert_close(s_w[0], torch.tensor([0.8 * a + 0.2 * b for a, b in zip(exp_magn, exp_stab)], dtype=F64))


def test_reverse_cumsum():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 0.0, 1.0, 7.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert reverse_cumsum(x, m).tolist() == [[6.0, 5.0, 3.0, 0.0], [13.0, 8.0, 8.0, 7.0]]


def test_repro_process_rewards_advantages_and_loss_by_hand():
    Tn, Vn = 8, 5
    leaf = _logits(2, Tn, Vn, seed=18).requires_grad_(True)
    tokens = torch.randint(0, Vn, (2, Tn), generator=_gen(19))
    lengths = [8, 5]
    mask = _mask(lengths, Tn)
    positions = torch.tensor([[0, 3, 6, 8], [0, 2, 5, -1]])
    scores = torch.tensor([[-4.0, -3.0, -3.5, -1.0], [-2.0, -2.5, -0.5, 0.0]], dtype=F64)
    rewards = [1.0, 0.0]
    alpha = 0.1
    inputs = ObjectiveInputs(tokens=tokens, mask=mask, policy_logits=leaf, rewards=torch.tensor(rewards, dtype=F64),
                             group_ids=torch.tensor([0, 0]),
                             extra={"prefix_positions": positions, "prefix_scores": scores})
    loss, stats = get_objective("repro").compute(inputs, ReproConfig(alpha=alpha))

    # Hand: S per point, r̃_j = S_j − S_{j−1} on token p_j − 1, normalised over the group's 5 values.
    def point_scores(js):
        out = []
        for k in range(len(js)):
            magn = math.tanh((js[k] - js[0]) / abs(js[0]) - 1) + 1
            stab = (_brute_tau_b(js[: k + 1]) + 1) / 2
            out.append(0.5 * magn + 0.5 * stab)
        return out

    s0, s1 = point_scores([-4.0, -3.0, -3.5, -1.0]), point_scores([-2.0, -2.5, -0.5])
    raw = {(0, 2): s0[1] - s0[0], (0, 5): s0[2] - s0[1], (0, 7): s0[3] - s0[2],
           (1, 1): s1[1] - s1[0], (1, 4): s1[2] - s1[1]}
    vals = list(raw.values())
    m, sd = statistics.mean(vals), statistics.stdev(vals)
    dense = [[0.0] * Tn for _ in range(2)]
    for (b, t), v in raw.items():
        dense[b][t] = (v - m) / (sd + 1e-4)
    outcome = _brute_adv(rewards, [0, 0])
    adv = [[outcome[b] + alpha * sum(dense[b][t:lengths[b]]) for t in range(lengths[b])] for b in range(2)]
    logp = leaf.log_softmax(-1)
    ref = 0.0
    for b in range(2):
        for t in range(lengths[b]):
            lp = logp[b, t, tokens[b, t]]
            ref = ref - adv[b][t] * torch.exp(lp - lp.detach())
    ref = ref / sum(lengths)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(_grad(loss, leaf), _grad(ref, leaf))
    assert stats["n_points"] == 7.0
    assert stats["kendall_tau_final"] == pytest.approx((4 / 6 + 1 / 3) / 2)
    assert stats["process_reward_abs_mean"] == pytest.approx(statistics.mean(abs(v) for v in vals))

    # α = 0 is plain GRPO (ε = 0.2, token mean): the process term is what moved the loss.
    plain, _ = get_objective("repro").compute(inputs, ReproConfig(alpha=0.0))
    grpo_bnpo, _ = get_objective("grpo").compute(inputs, GrpoConfig(beta=0.0, loss_aggregation="bnpo"))
    torch.testing.assert_close(plain, grpo_bnpo)
    assert not torch.allclose(plain, loss)


@pytest.mark.parametrize("positions, match", [
    ([[1, 3, 8]], "position 0"), ([[0, 3, 3]], "increasing"), ([[0, 3, 9]], "past the end"), ([[0, -1, 8]], "padding"),
])
def test_repro_rejects_bad_points(positions, match):
    inputs = ObjectiveInputs(
        tokens=torch.zeros(1, 8, dtype=torch.long), mask=torch.ones(1, 8), policy_logits=torch.zeros(1, 8, 3),
        rewards=torch.ones(1), group_ids=torch.zeros(1, dtype=torch.long),
        extra={"prefix_positions": torch.tensor(positions), "prefix_scores": -torch.ones(1, 3)})
    with pytest.raises(ValueError, match=match):
        get_objective("repro").compute(inputs, None)


def test_segment_boundaries_and_point_selection():
    pieces = ["a", ".\n", "b", "?", "\n", "c", "\n\n", "d", " e"]
    assert segment_boundaries(pieces) == [False, False, True, False, False, True, False, True, False]
    boundary = torch.tensor(segment_boundaries(pieces))
    entropy = torch.tensor([9.0, 9.0, 0.5, 9.0, 9.0, 2.0, 9.0, 1.0, 9.0])
    assert select_prefix_points(entropy, boundary, length=9, k=2).tolist() == [0, 5, 7, 9]
    assert select_prefix_points(entropy, boundary, length=9, k=10).tolist() == [0, 2, 5, 7, 9]
    assert select_prefix_points(entropy, boundary, length=6, k=10).tolist() == [0, 2, 5, 6]
