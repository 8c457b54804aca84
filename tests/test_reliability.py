"""Faults injected into real `intro-lite train` runs (SIGKILL mid-checkpoint, SIGKILL before any
checkpoint, a NaN loss, a run of NaN losses) and an adapter evaluated on the wrong base.
docs/reliability.md lists every fault and bad input with what it produced.

Runs use the small test preset with objective = sft: that model gets ~no rollout right, so InTRO would
keep nothing and never change the adapter, while SFT trains on the gold solutions every step, so the
adapter, optimizer state and (through the adapter) the rollouts all change and must be restored exactly."""

import pytest
import torch
from safetensors.torch import load_file
from test_eval import make_adapter
from test_resume import COMPARED, metrics, run_cli

pytestmark = pytest.mark.slow

TEST_PRESET = ("--set", "model.name_or_path=tiny-test", "--set", "data.source=tiny-test", "--set", "objective=sft")
EVERY_STEP = (*TEST_PRESET, "--set", "train.checkpoint_every=1")


def error_lines(stderr: str) -> list[str]:
    # stderr also carries vLLM/bitsandbytes notices; the CLI's own message is the `error:` line.
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def no_partial_files(run_dir) -> list[str]:
    return [str(p) for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".old"))]


# The reference run has a NaN loss injected at step 2: it doubles as the "one NaN step" test, and the
# interrupted run below (same injection) must reproduce its skipped step too.
KEEP_ALL = (*EVERY_STEP, "--set", "train.keep_checkpoints=4")


@pytest.fixture(scope="module")
def full_run(tiny_assets, tmp_path_factory):
    """An uninterrupted 4-step run, checkpointing every step (all kept), NaN loss at step 2."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTRO_LITE_FAULT_NAN_STEPS", "2")
        out = run_cli(root, "full", *KEEP_ALL)
    assert out.returncode == 0, out.stderr[-2000:]
    return root / "full"


def test_one_nan_step_is_skipped_and_counted(full_run):
    rows = metrics(full_run / "metrics.jsonl")
    assert [r["skipped_nonfinite"] for r in rows] == [False, True, False, False]
    assert rows[1]["loss"] != rows[1]["loss"]  # NaN logged as such
    ck = full_run / "checkpoints"
    step1, step2, step3 = (adapter(ck / f"step-{i}" / "adapter") for i in (1, 2, 3))
    assert all(torch.equal(step1[k], step2[k]) for k in step1)  # the NaN step changed no weight
    state1, state2 = (torch.load(ck / s / "trainer_state.pt", weights_only=True)["optimizer"]["state"] for s in ("step-1", "step-2"))
    assert state1 and all(torch.equal(state1[i][k], state2[i][k]) for i in state1 for k in state1[i])  # nor AdamW's moments
    assert any(not torch.equal(step2[k], step3[k]) for k in step2)  # and training went on after it


def test_kill_during_checkpoint_write_then_resume(full_run, tmp_path, monkeypatch):
    # SIGKILL inside save_checkpoint for step 3, after the adapter and trainer state are in the temp dir
    # but before its COMPLETE marker and rename.
    monkeypatch.setenv("INTRO_LITE_FAULT_NAN_STEPS", "2")
    monkeypatch.setenv("INTRO_LITE_FAULT_IN_CHECKPOINT", "3")
    killed = run_cli(tmp_path, "cut", *KEEP_ALL)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = tmp_path / "cut" / "checkpoints"
    partial = ckpts / ".step-3.tmp"
    assert (partial / "trainer_state.pt").exists() and (partial / "adapter" / "adapter_model.safetensors").exists()
    assert not (partial / "COMPLETE").exists()
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-1", "step-2"]
    assert len(metrics(tmp_path / "cut" / "metrics.jsonl")) == 3  # step 3 was logged before its checkpoint

    monkeypatch.delenv("INTRO_LITE_FAULT_IN_CHECKPOINT")
    resumed = run_cli(tmp_path, "cut", *KEEP_ALL, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = metrics(full_run / "metrics.jsonl"), metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # resumed from step-2, the partial step-3 ignored
    for ra, rb in zip(a, b):
        for key in [k for k in COMPARED if k in ra] + ["nll", "skipped_nonfinite"]:
            want = ra[key] if ra[key] is None else pytest.approx(ra[key], rel=1e-6, abs=1e-9, nan_ok=True)
            assert rb[key] == want, (ra["step"], key, ra[key], rb[key])
    final_a, final_b = adapter(full_run / "final"), adapter(tmp_path / "cut" / "final")
    assert final_a.keys() == final_b.keys()
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-6, rtol=0) for k in final_a)
    assert no_partial_files(tmp_path / "cut") == []


def test_kill_before_the_first_checkpoint_resumes_from_step_0(tiny_assets, tmp_path):
    # Killed after step 1 with checkpoint_every = 2: nothing to restore, so --resume starts the run again.
    killed = run_cli(tmp_path, "early", *TEST_PRESET, fault_after=1)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(metrics(tmp_path / "early" / "metrics.jsonl")) == 1
    resumed = run_cli(tmp_path, "early", *TEST_PRESET, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [line for line in resumed.stderr.splitlines() if line.startswith("warning:")] == [
        f"warning: --resume: no usable checkpoint in {tmp_path / 'early' / 'checkpoints'}; starting again from step 0"]
    runs = metrics(tmp_path / "early" / "metrics.jsonl")
    assert [r["step"] for r in runs] == [1, 2, 3, 4]  # step 1 logged once, not twice
    assert (tmp_path / "early" / "final" / "adapter_model.safetensors").exists()
    assert no_partial_files(tmp_path / "early") == []


def test_context_longer_than_the_model_fails_before_anything_is_written(tiny_assets, tmp_path):
    out = run_cli(tmp_path, "long", *TEST_PRESET, "--set", "rollout.max_model_len=1024")
    assert out.returncode == 2
    [line] = error_lines(out.stderr)
    assert line.startswith("error: rollout.max_model_len = 1024 exceeds ") and line.endswith("max_position_embeddings (512)")
    assert not (tmp_path / "long").exists()


def test_nan_streak_aborts_with_one_line(tiny_assets, tmp_path, monkeypatch):
    monkeypatch.setenv("INTRO_LITE_FAULT_NAN_STEPS", "1,2")
    out = run_cli(tmp_path, "diverged", *TEST_PRESET, "--set", "train.max_nonfinite_steps=1")
    assert out.returncode == 2
    assert error_lines(out.stderr) == ["error: step 2: loss or gradient not finite for 2 steps in a row "
                                       "(train.max_nonfinite_steps = 1); lower train.lr or check the data"]
    run = tmp_path / "diverged"
    assert [r["step"] for r in metrics(run / "metrics.jsonl")] == [1]  # whole lines only: step 2 aborted before its log
    assert not (run / "final").exists() and not (run / "checkpoints").exists()
    assert no_partial_files(run) == []


def test_adapter_on_a_base_with_another_hidden_size(full_run, tiny_assets, tmp_path):
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from intro_lite.cli import app
    from intro_lite.config import ConfigError
    from intro_lite.policy import check_adapter_matches_base
    from intro_lite.tiny.model import TinyModelConfig, build_tiny_model

    # The same tokenizer and head_dim 64, but 4 heads: hidden 256 instead of the test preset's 128.
    tok = AutoTokenizer.from_pretrained(tiny_assets.model_dir)
    wide = tmp_path / "wide-base"
    build_tiny_model(tok, TinyModelConfig(num_attention_heads=4, num_key_value_heads=1, num_hidden_layers=1)).save_pretrained(wide)
    tok.save_pretrained(wide)
    trained = full_run / "final"
    check_adapter_matches_base(trained, str(tiny_assets.model_dir))  # its own base: fine

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--model", str(wide), "--adapter", str(trained), "--benchmarks", "tiny-test",
                                      "--limit", "2", "--out", str(out)], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and str(trained) in errors[0] and "lora_A.weight has shape" in errors[0], result.output
    assert "the adapter was trained on a different base" in errors[0]
    assert not out.exists()  # nothing written, vLLM never started

    # A base with fewer layers, and a truncated weights file: one line each too.
    deep = make_adapter(build_two_layer_base(tok, tmp_path), tmp_path / "deep-adapter", rank=4, seed=0)
    with pytest.raises(ConfigError, match=r"layers\.1\..* is for layer 1, but the base .* has 1 layers") as e:
        check_adapter_matches_base(deep, str(tiny_assets.model_dir))
    assert "\n" not in str(e.value)
    blob = (deep / "adapter_model.safetensors").read_bytes()
    (deep / "adapter_model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ConfigError, match=r"adapter_model.safetensors: unreadable safetensors file"):
        check_adapter_matches_base(deep, str(tiny_assets.model_dir))
    # An adapter vLLM cannot serve at all (DoRA) fails the same way instead of a vLLM traceback mid-eval.
    dora = tmp_path / "dora"
    make_dora(tiny_assets.model_dir, dora)
    with pytest.raises(ConfigError, match=r"dora: vLLM cannot load DoRA adapters"):
        check_adapter_matches_base(dora, str(tiny_assets.model_dir))


def make_dora(model_dir, out):
    import peft
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)).save_pretrained(str(out))


def build_two_layer_base(tok, tmp_path):
    from intro_lite.tiny.model import TinyModelConfig, build_tiny_model

    path = tmp_path / "deep-base"
    build_tiny_model(tok, TinyModelConfig(num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2)).save_pretrained(path)
    tok.save_pretrained(path)
    return path
