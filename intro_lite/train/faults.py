"""Fault injection for the reliability and resume tests (docs/reliability.md). Unset, each is a no-op.

INTRO_LITE_FAULT_NAN_STEPS=2,3     the loss of those steps is multiplied by NaN
INTRO_LITE_FAULT_AT=POINT:N[,...]  SIGKILL at a named point of step N (0 = before the first step):
    after_step    right after step N is logged (and checkpointed, if it was due)
    checkpoint    inside step N's checkpoint write: its files written, no COMPLETE manifest, no rename
    eval          inside the eval write of step N (0 = "before", the last step = "after"): half a line appended
    metrics       inside step N's metrics.jsonl write: half a line appended
    adapter_push  inside the adapter push of version N: new adapter dir written, not yet in vLLM
INTRO_LITE_FAULT_RAISE=R:N        rank R raises an error in step N's train_step, before the gradient all-reduce
                                   (the other ranks wait there: the failing-rank tests of docs/scale.md)
INTRO_LITE_FAULT_STALL=R:N        rank R stops there instead (sleeps): the others' collective times out
INTRO_LITE_FAULT_STALE_ADAPTER=N  from adapter version N on, push_adapter writes the adapter but never hands it
                                   to vLLM, which keeps serving what it had (0: the base model): the silent sync
                                   failure the logprob_gap alarm must catch (train/gap.py)
INTRO_LITE_FAULT_AFTER_STEP=N and INTRO_LITE_FAULT_IN_CHECKPOINT=N are the older spellings of
after_step:N and checkpoint:N.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

POINTS = ("after_step", "checkpoint", "eval", "metrics", "adapter_push")
_OLD = {"INTRO_LITE_FAULT_AFTER_STEP": "after_step", "INTRO_LITE_FAULT_IN_CHECKPOINT": "checkpoint"}


def poison_loss(loss, step: int):
    """`loss` times NaN if `step` is listed in INTRO_LITE_FAULT_NAN_STEPS."""
    if str(step) in os.environ.get("INTRO_LITE_FAULT_NAN_STEPS", "").split(","):
        return loss * float("nan")
    return loss


def armed(point: str, step: int) -> bool:
    wanted = [p.strip() for p in os.environ.get("INTRO_LITE_FAULT_AT", "").split(",") if p.strip()]
    wanted += [f"{name}:{os.environ[var]}" for var, name in _OLD.items() if os.environ.get(var)]
    return f"{point}:{step}" in wanted


def kill_at(point: str, step: int) -> None:
    if armed(point, step):
        os.kill(os.getpid(), signal.SIGKILL)


def tear_append(point: str, step: int, path: Path, record: dict) -> None:
    """A write torn by a kill (or a full disk): the first half of the record's line, then SIGKILL."""
    if armed(point, step):
        line = json.dumps(record) + "\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(line[: len(line) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def on_rank(step: int) -> None:
    """INTRO_LITE_FAULT_RAISE / _STALL = R:N: rank R raises, or stops answering, in step N."""
    from intro_lite.train import dist

    here = f"{dist.rank()}:{step}"
    if os.environ.get("INTRO_LITE_FAULT_RAISE") == here:
        raise RuntimeError(f"injected failure on rank {dist.rank()} at step {step} (INTRO_LITE_FAULT_RAISE)")
    if os.environ.get("INTRO_LITE_FAULT_STALL") == here:
        time.sleep(24 * 3600)


def stale_adapter(version: int) -> bool:
    """INTRO_LITE_FAULT_STALE_ADAPTER = N: adapter versions >= N are not pushed to vLLM."""
    raw = os.environ.get("INTRO_LITE_FAULT_STALE_ADAPTER", "")
    return raw.strip() != "" and version >= int(raw)
