"""Fault injection for the reliability and resume tests (docs/reliability.md). Unset, each is a no-op.

INTRO_LITE_FAULT_NAN_STEPS=2,3   the loss of those steps is multiplied by NaN
INTRO_LITE_FAULT_AFTER_STEP=N    SIGKILL right after step N is logged (and checkpointed)
INTRO_LITE_FAULT_IN_CHECKPOINT=N SIGKILL while writing step N's checkpoint, before COMPLETE
"""

from __future__ import annotations

import os
import signal


def poison_loss(loss, step: int):
    """`loss` times NaN if `step` is listed in INTRO_LITE_FAULT_NAN_STEPS."""
    if str(step) in os.environ.get("INTRO_LITE_FAULT_NAN_STEPS", "").split(","):
        return loss * float("nan")
    return loss


def kill_after_step(step: int) -> None:
    if os.environ.get("INTRO_LITE_FAULT_AFTER_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def kill_in_checkpoint(step: int) -> None:
    if os.environ.get("INTRO_LITE_FAULT_IN_CHECKPOINT") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
