"""Checkpoints: `checkpoints/step-N/` (adapter + trainer state), written atomically, restored exactly."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from intro_lite.config import Config
from intro_lite.io import fsync_file, write_atomic
from intro_lite.policy import save_adapter
from intro_lite.train import faults


def save_checkpoint(cfg: Config, model, optimizer, scheduler, sampler, step: int, version: int) -> Path:
    """`checkpoints/step-N/`: adapter + trainer state, valid only once its COMPLETE marker exists."""
    ckpt_root = cfg.run_dir / "checkpoints"
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".step-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_adapter(model, tmp / "adapter")
    state = {
        "step": step,
        "adapter_version": version,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        # Plain ints and tensors only, so the state loads with torch.load(weights_only=True).
        "rng": {"python": _python_rng_state(), "numpy": _numpy_rng_state(), "torch": torch.get_rng_state()},
    }
    torch.save(state, tmp / "trainer_state.pt")
    fsync_file(tmp / "trainer_state.pt")
    faults.kill_in_checkpoint(step)
    write_atomic(tmp / "COMPLETE", f"{step}\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _complete(ckpt_root)[: -cfg.train.keep_checkpoints]:
        shutil.rmtree(old)
    return final


def _complete(root: Path) -> list[Path]:
    return sorted((p for p in root.glob("step-*") if (p / "COMPLETE").exists()), key=lambda p: int(p.name[5:]))


def latest_checkpoint(cfg: Config) -> Path | None:
    """The newest complete checkpoint (its COMPLETE marker written last); partial ones are ignored."""
    done = _complete(cfg.run_dir / "checkpoints")
    return done[-1] if done else None


def clear_run_logs(run_dir: Path) -> None:
    """Forget the logs of a run that died before its first checkpoint: it starts again from step 0."""
    for name in ("metrics.jsonl", "eval.jsonl"):
        (run_dir / name).unlink(missing_ok=True)


def restore_checkpoint(ckpt: Path, model, optimizer, scheduler, sampler) -> tuple[int, int]:
    """Adapter weights, optimizer, scheduler, data cursor and RNGs; metrics after the checkpoint are dropped."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    rng = state["rng"]
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    np.random.set_state(("MT19937", np.array(rng["numpy"][0], dtype=np.uint32), *rng["numpy"][1:]))
    torch.set_rng_state(rng["torch"])
    metrics = ckpt.parent.parent / "metrics.jsonl"
    if metrics.exists():
        kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= state["step"]]
        write_atomic(metrics, "".join(line + "\n" for line in kept))
    evals = ckpt.parent.parent / "eval.jsonl"  # periodic scores after the checkpoint are re-run
    if evals.exists():
        kept = [line for line in evals.read_text().splitlines()
                if json.loads(line)["step"] <= state["step"] and json.loads(line)["when"] != "after"]
        write_atomic(evals, "".join(line + "\n" for line in kept))
    return state["step"], state["adapter_version"]


def previous_rollout_tokens(cfg: Config, start: int) -> int:
    """Rollout tokens spent before `start` (the token budget counts across a resume)."""
    path = cfg.run_dir / "metrics.jsonl"
    if start == 0 or not path.exists():
        return 0
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]).get("rollout_tokens_total", 0) if lines else 0


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_state() -> list:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return [keys.tolist(), int(pos), int(has_gauss), float(cached)]
