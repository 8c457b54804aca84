"""Training: ``loop.train`` (one screen, top to bottom) and the pieces beside it. Import a helper from
the module that owns it; the package exports only ``train``.

loop.py        train() and the setup helpers it calls in order
preflight.py   the inputs' checks before anything is written (context length, gold answers)
rundir.py      the run directory (created, or checked on --resume) and its warnings log
rollouts.py    one step's graded rollouts from vLLM, and the seeds of a step's draws
step.py        train_step(): micro-batches, passes, loss, backward, non-finite guard, optimizer step
passes.py      forward_passes(): the passes an objective's Needs declare, as ObjectiveInputs
checkpoint.py  save / find / restore checkpoints
metrics.py     Timer, the metrics.jsonl record, the progress bar
runlog.py      what a step writes: metrics.jsonl, trackers, samples.jsonl, alarms, plots
evals.py       the held-out scores during training (eval.jsonl)
dist.py        data parallel under torchrun: the process group and its collectives (no-ops on one process)
faults.py      the INTRO_LITE_FAULT_* hooks of the reliability tests
"""

from intro_lite.train.loop import train

__all__ = ["train"]
