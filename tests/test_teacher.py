"""InTRO's teacher options (intro.teacher = policy | base | ema | lagged; train/teacher.py): the limits of
the lagging teachers are the paper's and the frozen one exactly, over several steps of train_step."""

import pytest
import torch

from test_train_step import _rows, tiny_test_cfg

STEPS = 4


@pytest.fixture(scope="module")
def policy(tiny_assets, tmp_path_factory):
    from intro_lite.policy import load_policy

    return load_policy(tiny_test_cfg(tmp_path_factory.mktemp("teacher")), str(tiny_assets.model_dir))


def _trajectory(policy, **settings):
    """Adapter weights and losses after each of STEPS InTRO steps (AdamW, lr 0.05) from the zero-B start, with
    the teacher `settings` ask for; the model is put back as it was."""
    from intro_lite.objectives import get_objective
    from intro_lite.policy import trainable_parameters
    from intro_lite.train.passes import PassSetup
    from intro_lite.train.step import train_step
    from intro_lite.train.teacher import make_teacher

    model, tok = policy
    params = trainable_parameters(model)
    saved = [p.detach().clone() for p in params]
    objective = get_objective("intro")
    cfg = objective.config(n_candidates=5, logits_chunk_size=4, **settings)
    needs = objective.needs_for(cfg)
    rows = [r for r in _rows(tok) if r.reward > 0]
    try:
        with torch.no_grad():
            for p in params:
                if "lora_B" in p.name_for_test:
                    p.zero_()  # peft's start: B = 0, so the adapter adds exactly nothing
        teacher = make_teacher(needs, params)
        setup = PassSetup(model, objective, cfg, needs, tok.pad_token_id, tok, [], 16, teacher)
        opt = torch.optim.AdamW(params, lr=0.05)
        out = []
        for step in range(1, STEPS + 1):
            result = train_step(setup, opt, rows, micro_batch_size=2, max_grad_norm=1e9, generator_seed=step, step=step)
            out.append((result.loss, [p.detach().clone() for p in params]))
        return out, teacher
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


@pytest.fixture(scope="module", autouse=True)
def _names(policy):
    from intro_lite.policy import trainable_parameters

    model, _ = policy
    names = {id(p): n for n, p in model.named_parameters()}
    for p in trainable_parameters(model):
        p.name_for_test = names[id(p)]


def _assert_same(a, b):
    for (loss_a, w_a), (loss_b, w_b) in zip(a, b):
        assert loss_a == loss_b
        assert all(torch.equal(x, y) for x, y in zip(w_a, w_b))


def test_limits_of_the_lagging_teachers_are_exact(policy):
    paper, _ = _trajectory(policy, teacher="policy")
    frozen, _ = _trajectory(policy, teacher="base")
    _assert_same(_trajectory(policy, teacher="ema", teacher_decay=0.0)[0], paper)  # t <- θ after every step
    _assert_same(_trajectory(policy, teacher="lagged", teacher_refresh=1)[0], paper)
    _assert_same(_trajectory(policy, teacher="ema", teacher_decay=1.0)[0], frozen)  # t stays the zero-B start
    # Power: the two limits differ, and a teacher between them is neither.
    assert not torch.equal(paper[-1][1][0], frozen[-1][1][0]) or paper[-1][0] != frozen[-1][0]
    middle, _ = _trajectory(policy, teacher="ema", teacher_decay=0.5)
    assert middle[-1][0] not in (paper[-1][0], frozen[-1][0])


def test_lagged_teacher_refreshes_on_schedule(policy):
    out, teacher = _trajectory(policy, teacher="lagged", teacher_refresh=3)
    # Refreshed after step 3 to the weights after step 3; steps 1-2 kept the start's.
    assert all(torch.equal(t, w) for t, w in zip(teacher.weights, out[2][1]))
    assert not all(torch.equal(t, w) for t, w in zip(teacher.weights, out[3][1]))


def test_teacher_state_round_trips_and_rejects_a_mismatch():
    from intro_lite.train.teacher import LaggedTeacher

    params = [torch.randn(3, 2), torch.randn(4)]
    a = LaggedTeacher(params, decay=0.9)
    start = [t.clone() for t in a.weights]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)  # the policy moved
    a.update(1)  # t <- 0.9·t + 0.1·θ (float32: a few ulp of rounding)
    for t, t0, p in zip(a.weights, start, params):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * p, rtol=0, atol=1e-6)
    b = LaggedTeacher([p * 0 for p in params], decay=0.9)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.weights, b.weights))
    with pytest.raises(ValueError, match="do not match"):
        b.load_state_dict([torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="either"):
        LaggedTeacher(params)


def test_doctor_counts_the_teachers_copy():
    import dataclasses

    from intro_lite.config import load_config
    from intro_lite.doctor.architectures import ARCHITECTURES
    from intro_lite.doctor.memory import estimate_memory

    cfg = load_config("recipes/tiny.toml")
    arch = ARCHITECTURES["Qwen/Qwen2.5-1.5B"]
    plain = dict((n, b) for n, b, _ in estimate_memory(cfg, arch))
    ema = dataclasses.replace(cfg, intro=dataclasses.replace(cfg.intro, teacher="ema"))
    terms = dict((n, b) for n, b, _ in estimate_memory(ema, arch))
    assert "teacher's LoRA copy" not in plain
    assert terms["teacher's LoRA copy"] * 4 == terms["LoRA weights + grads + AdamW"]  # 4 of AdamW's 16 bytes


def _train(tmp_path, name, *extra):
    import json

    from intro_lite.config import load_config
    from intro_lite.train import train

    cfg = load_config("recipes/tiny.toml", [f'output_dir="{tmp_path}"', f'name="{name}"', "train.steps=3",
                                            "train.prompts_per_step=4", "rollout.max_new_tokens=64", 'eval.source=""',
                                            "train.checkpoint_every=0", "model.quantization=none", 'intro.teacher="policy"',
                                            "intro.monitor_prompts=8", *extra])
    run = train(cfg, progress=False)
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_teacher_monitor_logs_drift_and_changes_nothing_else(tiny_demo_assets, tmp_path):
    from intro_lite.train.monitor import KEYS

    watched = _train(tmp_path, "watched", "intro.monitor_every=2")
    plain = _train(tmp_path, "plain", "intro.monitor_every=0")
    for a, b in zip(watched, plain):  # no random number drawn, no weight touched: the same training figures
        for key in ("rollout_accuracy", "loss", "grad_norm", "w_mean", "mean_length"):
            assert a[key] == b[key], (a["step"], key)
        assert not set(KEYS) & set(b)
    assert [r["teacher_hinted_accuracy"] is not None for r in watched] == [True, False, True]  # before steps 1 and 3
    first, third = watched[0], watched[2]
    assert first["teacher_kl_to_start"] == 0.0  # the fresh adapter (B = 0) is the start model exactly
    assert first["teacher_hint_leak"] == first["teacher_hint_leak_start"]
    assert third["teacher_kl_to_start"] > 0.0 and 0.0 <= third["teacher_hinted_accuracy"] <= 1.0
    assert 0.0 < first["teacher_hint_leak"] < 1.0


def test_teacher_drift_alarm():
    from intro_lite.config import load_config
    from intro_lite.train.alarms import Alarms

    alarms = Alarms(load_config("recipes/tiny.toml").alarms, samples_per_step=64)
    steps = [(1.0, 0.0), (0.9, 0.0007), (0.6, 0.008), (0.45, 0.001), (0.9, 0.1)]  # (hinted accuracy, KL to the start)
    fired = [bool([n for n, _ in alarms.check({"step": i + 1, "teacher_hinted_accuracy": h, "teacher_kl_to_start": kl})
                   if n == "teacher_drift"]) for i, (h, kl) in enumerate(steps)]
    assert fired == [False, False, False, True, True]  # below half the start; then the KL above 0.01 nats/token
