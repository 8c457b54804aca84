"""Exact resume: a run SIGKILLed mid-way and resumed logs the same metrics as an uninterrupted one."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

COMPARED = ("rollout_accuracy", "kept_fraction", "mean_length", "max_length", "loss", "grad_norm", "w_mean", "adapter_version")


def run_cli(tmp_path, name, *extra, fault_after=None, resume=False):
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"}
    if fault_after is not None:
        env["INTRO_LITE_FAULT_AFTER_STEP"] = str(fault_after)
    cmd = [sys.executable, "-m", "intro_lite.cli", "train", "recipes/tiny.toml", "--no-progress",
           "--output", str(tmp_path), "--name", name, "--set", "train.steps=4", "--set", "train.prompts_per_step=4",
           "--set", "rollout.max_new_tokens=64", "--set", 'eval.source=""', "--set", "train.checkpoint_every=2", *extra]
    if resume:
        cmd.append("--resume")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# The recipe's frozen teacher, and an EMA teacher whose own weights must come back from the checkpoint
# (were it rebuilt from the restored policy instead, steps 3-4 would read another teacher).
@pytest.mark.parametrize("teacher", [(), ("--set", 'intro.teacher="ema"', "--set", "intro.teacher_decay=0.5")],
                         ids=["recipe", "ema"])
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_demo_assets, tmp_path, teacher):
    full = run_cli(tmp_path, "full", *teacher)
    assert full.returncode == 0, full.stderr[-2000:]
    # Killed after step 3 was logged: the step-2 checkpoint is the last complete one.
    killed = run_cli(tmp_path, "cut", *teacher, fault_after=3)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(metrics(tmp_path / "cut" / "metrics.jsonl")) == 3
    assert not (tmp_path / "cut" / "final").exists()
    resumed = run_cli(tmp_path, "cut", *teacher, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = metrics(tmp_path / "full" / "metrics.jsonl"), metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in COMPARED:
            want = ra[key] if ra[key] is None else pytest.approx(ra[key], rel=1e-6, abs=1e-9)
            assert rb[key] == want, (ra["step"], key, ra[key], rb[key])
    final = [(tmp_path / name / "final" / "adapter_model.safetensors").read_bytes() for name in ("full", "cut")]
    assert final[0] == final[1]  # bit-exact


def test_resume_refuses_a_different_config(tiny_demo_assets, tmp_path):
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    from intro_lite.config import load_config, to_toml

    same = ["train.steps=4", "train.prompts_per_step=4", "rollout.max_new_tokens=64", 'eval.source=""',
            "train.checkpoint_every=2"]
    cfg = load_config("recipes/tiny.toml", [f'output_dir="{tmp_path}"', "name=r", *same])
    (tmp_path / "r" / "config.toml").write_text(to_toml(cfg))
    out = run_cli(tmp_path, "r", "--set", "train.lr=0.5", resume=True)
    assert out.returncode == 2
    assert "--resume:" in out.stderr and f"train.lr = {cfg.train.lr!r}, not 0.5" in out.stderr, out.stderr
