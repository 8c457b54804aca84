"""Training: ``loop.train`` (one screen, top to bottom) and the pieces beside it.

loop.py        train() and the setup helpers it calls in order
step.py        train_step(): micro-batches, passes, loss, backward, non-finite guard, optimizer step
passes.py      forward_passes(): the passes an objective's Needs declare, as ObjectiveInputs
checkpoint.py  save / find / restore checkpoints
metrics.py     Timer, the metrics.jsonl record, the progress bar
evals.py       the held-out scores during training (eval.jsonl)
dist.py        data parallel under torchrun: the process group and its collectives (no-ops on one process)
faults.py      the INTRO_LITE_FAULT_* hooks of the reliability tests
"""

from intro_lite.errors import TrainingAborted
from intro_lite.objectives import Row
from intro_lite.train.checkpoint import (clear_run_logs, latest_checkpoint, previous_rollout_tokens, restore_checkpoint,
                                         save_checkpoint)
from intro_lite.train.loop import (Rollouts, check_context_length, check_golds, context_length, engine_settings, first_difference, lr_lambda,
                                   make_engine, make_optimizer, prepare_run_dir, push_adapter,
                                   resolve_model_path, roll_out, rollout_seed, seed_everything,
                                   tokenize_problems, train)
from intro_lite.train.evals import previous_eval, run_eval
from intro_lite.train.metrics import Timer, make_progress, step_record
from intro_lite.train.passes import PassSetup, forward_passes
from intro_lite.train.step import StepResult, micro_batches, nonfinite_guard, train_step

__all__ = [
    "PassSetup", "Rollouts", "Row", "StepResult", "Timer", "TrainingAborted", "check_context_length", "check_golds",
    "clear_run_logs", "context_length",
    "engine_settings", "first_difference", "forward_passes", "latest_checkpoint", "lr_lambda", "make_engine",
    "make_optimizer", "make_progress", "micro_batches", "nonfinite_guard", "prepare_run_dir", "previous_eval",
    "previous_rollout_tokens", "push_adapter", "resolve_model_path", "restore_checkpoint", "roll_out", "rollout_seed",
    "run_eval", "save_checkpoint", "seed_everything", "step_record", "tokenize_problems", "train", "train_step",
]
