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
from intro_lite.errors import ConfigError
from intro_lite.io import fsync_file, read_jsonl_log, verify_manifest, write_atomic, write_manifest
from intro_lite.policy import save_adapter
from intro_lite.train import dist, faults


def save_checkpoint(cfg: Config, model, optimizer, scheduler, sampler, step: int, version: int,
                    teacher=None) -> Path | None:
    """`checkpoints/step-N/`: adapter + trainer state, valid only once its COMPLETE marker exists.
    Every rank calls it (each rank's RNG states are gathered); rank 0 alone writes (returns None elsewhere)."""
    rngs = dist.all_gather_objects(_rng_state())  # ranks hold the same adapter, optimizer and sampler, not RNGs
    if not dist.is_main():
        return None
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
        "world_size": dist.world(),
        # One entry per rank. Plain ints and tensors only, so the state loads with torch.load(weights_only=True).
        "rng": rngs,
    }
    if teacher is not None:  # InTRO's lagged teacher (train/teacher.py): its own adapter weights
        state["teacher"] = teacher.state_dict()
    torch.save(state, tmp / "trainer_state.pt")
    fsync_file(tmp / "trainer_state.pt")  # (save_adapter fsyncs the adapter's files)
    faults.kill_at("checkpoint", step)
    # Sizes and SHA-256 of every file, written last: a resume trusts the checkpoint only if they still agree.
    write_manifest(tmp, "COMPLETE", {"step": step, "world_size": dist.world()})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _complete(ckpt_root)[: -cfg.train.keep_checkpoints]:
        shutil.rmtree(old)
    return final


def _rng_state() -> dict:
    return {"python": _python_rng_state(), "numpy": _numpy_rng_state(), "torch": torch.get_rng_state()}


def check_world_size(ckpt: Path) -> None:
    """A checkpoint resumes exactly only under the number of processes that wrote it (each rank's RNG
    and share of the batch); one line otherwise. Checkpoints from before data parallel were one process."""
    written = json.loads((ckpt / "COMPLETE").read_text(encoding="utf-8")).get("world_size", 1)
    if written != dist.world():
        raise ConfigError(f"--resume: {ckpt} was written by {written} process(es), this run has {dist.world()}; "
                          f"resume with --nproc {written} (torchrun --nproc-per-node {written})")


def _complete(root: Path) -> list[Path]:
    return sorted((p for p in root.glob("step-*") if (p / "COMPLETE").exists() and p.name[5:].isdigit()),
                  key=lambda p: int(p.name[5:]))


def latest_checkpoint(cfg: Config, warn=lambda msg: None) -> Path | None:
    """The newest checkpoint whose files match its COMPLETE manifest; each newer one that does not
    (a truncated or missing file, a marker from an older version) is skipped with one `warn` line."""
    for ckpt in reversed(_complete(cfg.run_dir / "checkpoints")):
        problem = verify_manifest(ckpt, "COMPLETE")
        if not problem:
            return ckpt
        warn(f"skipped checkpoint {ckpt}: {problem}; falling back to an older one")
    return None


def checkpoint_step(run_dir: Path) -> int:
    """The step of the newest complete checkpoint under `run_dir` (0: none, a resume starts again)."""
    done = _complete(Path(run_dir) / "checkpoints")
    return int(done[-1].name[5:]) if done else 0


def clear_run_logs(run_dir: Path) -> None:
    """Forget the logs of a run that died before its first checkpoint: it starts again from step 0."""
    for name in ("metrics.jsonl", "eval.jsonl"):
        (run_dir / name).unlink(missing_ok=True)


def restore_checkpoint(ckpt: Path, model, optimizer, scheduler, sampler, warn=lambda msg: None,
                       teacher=None) -> tuple[int, int]:
    """Adapter weights, optimizer, scheduler, data cursor and RNGs; metrics after the checkpoint are dropped."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    if teacher is not None:
        if "teacher" not in state:
            raise ConfigError(f"--resume: {ckpt} has no teacher weights (it was written without a lagged teacher)")
        teacher.load_state_dict(state["teacher"])
    rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # a dict: one process, older format
    rng = rngs[dist.rank()]
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    np.random.set_state(("MT19937", np.array(rng["numpy"][0], dtype=np.uint32), *rng["numpy"][1:]))
    torch.set_rng_state(rng["torch"])
    run_dir = ckpt.parent.parent
    if dist.is_main():  # log lines after the checkpoint are re-run, and so are periodic scores; a torn last line is dropped
        truncate_log(run_dir / "metrics.jsonl", lambda r: r["step"] <= state["step"], warn)
        truncate_log(run_dir / "eval.jsonl", lambda r: r["step"] <= state["step"] and r["when"] != "after", warn)
    dist.barrier()  # the other ranks read the logs (the rollout-token budget) only once they are cut
    return state["step"], state["adapter_version"]


def truncate_log(path: Path, keep, warn) -> None:
    if not path.exists():
        return
    records, note = read_jsonl_log(path)
    if note:
        warn(note)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records if keep(r)))


def previous_rollout_tokens(cfg: Config, start: int) -> int:
    """Rollout tokens spent before `start` (the token budget counts across a resume)."""
    path = cfg.run_dir / "metrics.jsonl"
    if start == 0 or not path.exists():
        return 0
    records, _ = read_jsonl_log(path)
    return records[-1].get("rollout_tokens_total", 0) if records else 0


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_state() -> list:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return [keys.tolist(), int(pos), int(has_gauss), float(cached)]
