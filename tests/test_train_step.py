"""train_step and the loop's helpers, called directly on the small tiny-test model (no vLLM)."""

import pytest
import torch

from intro_lite.train.rollouts import rollout_seed


def test_rollout_seeds_never_repeat_across_steps_or_samples():
    # The engine gives sample j of prompt i the seed base + i·G + j (RolloutEngine.generate).
    for seed in (0, 1, 7):
        for P, G in ((16, 4), (1, 1), (3, 8)):
            used = [rollout_seed(seed, step, P * G) + i * G + j for step in range(1, 201) for i in range(P) for j in range(G)]
            assert len(set(used)) == len(used), (seed, P, G)
    assert rollout_seed(3, 1, 64) == 3 * 1_000_003 + 1  # step 1 keeps the seed it always had


def tiny_test_cfg(tmp_path, *extra):
    from intro_lite.config import load_config

    return load_config("recipes/tiny.toml", ["model.name_or_path=tiny-test", "data.source=tiny-test", 'eval.source=""',
                                             "model.quantization=none", f'output_dir="{tmp_path}"', *extra])


class NoRolloutEngine:
    """An engine for objectives that roll nothing out: generating is an error."""

    def set_adapter(self, path):
        pass

    def generate(self, *args, **kwargs):
        raise AssertionError("this objective needs no rollouts")


def test_sft_rolls_nothing_out(tiny_assets, tmp_path):
    import json

    from intro_lite.train import train

    cfg = tiny_test_cfg(tmp_path, 'objective="sft"', "train.steps=2", "train.prompts_per_step=3",
                        "train.checkpoint_every=0")
    run = train(cfg, progress=False, engine=NoRolloutEngine(), grader=object())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        assert r["rollout_accuracy"] is None and r["mean_length"] is None and r["rollout_tokens_total"] == 0
        assert r["logprob_gap_mean"] is None and r["logprob_gap_max"] is None  # gold solutions: nothing was served
        assert r["kept_fraction"] == 1.0 and r["n_tokens"] > 0 and r["nll"] > 0
        assert r["loss"] == pytest.approx(r["nll"], rel=1e-6)  # sum / n vs a mean: fp32 rounding


@pytest.fixture(scope="module")
def policy(tiny_assets, tmp_path_factory):
    from intro_lite.policy import load_policy

    return load_policy(tiny_test_cfg(tmp_path_factory.mktemp("p")), str(tiny_assets.model_dir))


def _rows(tok, G=3, prompts=2, seed=0):
    from intro_lite.objectives import Row

    g = torch.Generator().manual_seed(seed)
    V, rows = len(tok), []
    for p in range(prompts):
        x = torch.randint(5, V, (5 + p,), generator=g).tolist()
        for k in range(G):
            z = torch.randint(5, V, (3 + 2 * k + p,), generator=g).tolist()
            served = [-0.5 - 0.1 * t for t in range(len(z))]  # made-up vLLM logprobs: the gap is just a figure here
            rows.append(Row(p, p, x, x + [7, 8], z, len(z), float((k + p) % 2), served))
    return rows


def _setup(model, tok, name, **settings):
    from intro_lite.objectives import get_objective
    from intro_lite.train.passes import PassSetup

    objective = get_objective(name)
    cfg = objective.config(**settings) if objective.config else None
    return PassSetup(model, objective, cfg, objective.needs_for(cfg), tok.pad_token_id, tok, [], 16)


def _step(model, tok, name, rows, mb, lr=1.0, **kw):
    """Parameter change after one train_step with SGD(lr) (= −lr·gradient), and its result."""
    from intro_lite.policy import trainable_parameters
    from intro_lite.train.step import train_step

    params = trainable_parameters(model)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=lr)
    result = train_step(_setup(model, tok, name, **kw.pop("settings", {})), opt, rows, micro_batch_size=mb,
                        max_grad_norm=1e9, generator_seed=5, **kw)
    delta = [p.detach() - b for p, b in zip(params, before)]
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    return delta, result


# InTRO's sampled candidates come from per-row seeds (generator_seed + the row's index in the step),
# so the sampled form splits into micro-batches as exactly as the exact form ("all").
@pytest.mark.parametrize("name, settings", [("grpo", {"beta": 0.04}), ("intro", {"n_candidates": "all"}),
                                       ("intro", {"n_candidates": 5}),
                                       ("intro", {"n_candidates": 5, "logits_chunk_size": 3}), ("latro", {})])
def test_train_step_micro_batches_equal_one_batch(policy, name, settings):
    model, tok = policy
    rows = _rows(tok)
    if name == "intro":  # kept_only: the loop feeds it correct rollouts only
        rows = [r for r in rows if r.reward > 0]
    if name == "latro":  # z ⊕ y: the last two suffix tokens are the answer
        for r in rows:
            r.n_loss = len(r.suffix) - 2
            r.served_logprobs = r.served_logprobs[: r.n_loss]  # y was not sampled
    full, r_full = _step(model, tok, name, rows, mb=len(rows), settings=settings)
    split, r_split = _step(model, tok, name, rows, mb=1 if name == "intro" else 3, settings=settings)  # intro keeps 3 rows
    assert r_full.nonfinite_streak == 0 and r_full.grad_norm > 0
    assert r_split.loss == pytest.approx(r_full.loss, rel=1e-5, abs=1e-7)
    # The logprob gap (train/gap.py) is a sum over positions and a max: the split does not change it beyond the
    # forward pass's float32 rounding (~1e-6 of logprobs of a few nats)
    assert r_full.logprob_gap_mean > 0 and r_full.logprob_gap_max >= r_full.logprob_gap_mean
    assert r_split.logprob_gap_mean == pytest.approx(r_full.logprob_gap_mean, rel=0, abs=1e-5)
    assert r_split.logprob_gap_max == pytest.approx(r_full.logprob_gap_max, rel=0, abs=1e-5)
    for a, b in zip(full, split):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert any(d.abs().sum() > 0 for d in full)


@pytest.mark.parametrize("name, settings", [("grpo", {"beta": 0.0}), ("intro", {"logits_chunk_size": 4})])
def test_the_logprob_gap_to_the_trainers_own_logprobs_is_rounding(policy, name, settings):
    """Served logprobs equal to the policy's own (what vLLM serving the trained adapter returns, but for
    rounding) give a gap at float32's rounding of the two passes; the logits and the hidden-state path alike."""
    from intro_lite.forward import suffix_logits

    model, tok = policy
    rows = [r for r in _rows(tok) if r.reward > 0 or name != "intro"]
    model.eval()
    with torch.no_grad():
        logits, tokens, mask = suffix_logits(model, [r.x for r in rows], [r.suffix for r in rows], tok.pad_token_id)
    own = torch.log_softmax(logits.double(), -1).gather(-1, tokens[..., None]).squeeze(-1)
    for b, r in enumerate(rows):
        r.served_logprobs = own[b, : len(r.suffix)].tolist()
    _, result = _step(model, tok, name, rows, mb=2, settings=settings)
    # float32 logits of a few nats: one pass's rounding against another's (other batch shapes) is ~1e-6
    assert 0 <= result.logprob_gap_mean <= result.logprob_gap_max < 1e-4, (result.logprob_gap_mean, result.logprob_gap_max)


def test_train_step_loss_is_the_objectives_loss(policy):
    from intro_lite.train.passes import forward_passes

    model, tok = policy
    rows = _rows(tok)
    _, result = _step(model, tok, "grpo", rows, mb=2, settings={"beta": 0.04})
    setup = _setup(model, tok, "grpo", beta=0.04)
    inputs = forward_passes(setup, rows)
    loss, stats = setup.objective.compute(inputs, setup.config)
    assert result.loss == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    assert result.stats["n_tokens"] == stats["n_tokens"] == sum(r.n_loss for r in rows)
    assert set(result.stats) == set(setup.objective.stat_keys)


def test_train_step_skips_a_nonfinite_step_then_aborts(policy, monkeypatch):
    from intro_lite.errors import TrainingAborted

    model, tok = policy
    monkeypatch.setenv("INTRO_LITE_FAULT_NAN_STEPS", "3")
    delta, result = _step(model, tok, "sft", _rows(tok), mb=4, step=3, max_nonfinite_steps=1)
    assert result.nonfinite_streak == 1 and all(torch.all(d == 0) for d in delta)
    with pytest.raises(TrainingAborted, match="step 3: loss or gradient not finite for 2 steps in a row"):
        _step(model, tok, "sft", _rows(tok), mb=4, step=3, nonfinite_streak=1, max_nonfinite_steps=1)
    delta, result = _step(model, tok, "sft", _rows(tok), mb=4, step=4, nonfinite_streak=1, max_nonfinite_steps=1)
    assert result.nonfinite_streak == 0 and any(d.abs().sum() > 0 for d in delta)


def test_intro_teacher_base_reads_the_hint_with_the_adapter_off(policy):
    """intro.teacher = "base": the answer-conditioned pass is the start model's (adapter disabled), whatever the adapter
    has learned; "policy" (the paper's) moves with it. The policy pass keeps the adapter either way."""
    from intro_lite.policy import trainable_parameters
    from intro_lite.train.passes import forward_passes

    model, tok = policy
    rows = [r for r in _rows(tok) if r.reward > 0]
    params = trainable_parameters(model)
    saved = [p.detach().clone() for p in params]
    settings = {"n_candidates": 5, "logits_chunk_size": 0}
    try:
        with torch.no_grad():
            for p in params:
                p.zero_()  # the adapter adds nothing: the policy is the base
        start = forward_passes(_setup(model, tok, "intro", **settings), rows).posterior_logits
        with torch.no_grad():
            for p in params:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        moved = forward_passes(_setup(model, tok, "intro", **settings), rows)
        frozen = forward_passes(_setup(model, tok, "intro", teacher="base", **settings), rows)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    assert not torch.allclose(moved.posterior_logits, start, atol=1e-4)  # the policy's teacher moved
    torch.testing.assert_close(frozen.posterior_logits, start, rtol=1e-5, atol=1e-5)  # the base's did not
    torch.testing.assert_close(frozen.policy_logits, moved.policy_logits)  # the policy pass has the adapter
