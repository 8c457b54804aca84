"""What each step leaves behind besides checkpoints: metrics.jsonl, the trackers, samples.jsonl, the
alarms under the progress bar; and the plots at the end of the run."""

from __future__ import annotations

import json

from intro_lite.train import dist, faults
from intro_lite.io import append_jsonl, read_jsonl_log, write_atomic
from intro_lite.objectives import token_capture
from intro_lite.train.alarms import Alarms, logprob_gap_limit
from intro_lite.train.samples import is_sample_step, write_samples
from intro_lite.train.trackers import Trackers


def drop_samples_after(path, step: int) -> None:
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        write_atomic(path, "".join(line + "\n" for line in kept))


def gap_limit(cfg) -> tuple[float | None, str]:
    """The logprob_gap alarm's limit for this run's dtype and quantization (train/alarms.py)."""
    from intro_lite.policy import resolve_device, resolve_dtype

    dtype = str(resolve_dtype(cfg.model.dtype, resolve_device(cfg.model.device))).removeprefix("torch.")
    quantized = cfg.model.quantization != "none" or cfg.rollout.quantization != "none"
    return logprob_gap_limit(cfg.alarms, dtype=dtype, quantized=quantized, dropout=cfg.lora.dropout)


class RunLog:
    """Rank 0's: on the other ranks of a data-parallel run it writes nothing (only `capture` works,
    so their per-token values reach rank 0 with their rows)."""

    def __init__(self, cfg, bar, tokenizer, problems, start: int = 0):
        self.cfg, self.bar, self.tokenizer, self.problems = cfg, bar, tokenizer, problems
        self.main = dist.is_main()
        if not self.main:
            return
        drop_samples_after(cfg.run_dir / "samples.jsonl", start)  # a resume re-runs the steps after its checkpoint
        self.trackers = Trackers(cfg, start)
        self.alarms = Alarms(cfg.alarms, cfg.train.prompts_per_step * cfg.rollout.group_size, gap_limit(cfg))
        for r in read_jsonl_log(cfg.run_dir / "metrics.jsonl")[0] if start else []:
            self.alarms.check(r)  # a resume replays the steps it keeps: streaks and rolling means as if never stopped

    def capture(self, step: int):
        """Around train_step: the objective's per-token values (InTRO's w), on sample steps only."""
        return token_capture(is_sample_step(self.cfg, step))

    def write(self, record: dict, rolled, rows, captured: list | None) -> None:
        if not self.main:
            return
        raised = self.alarms.check(record)
        record["alarms"] = [name for name, _ in raised]
        faults.tear_append("metrics", record["step"], self.cfg.run_dir / "metrics.jsonl", record)  # fault injection
        append_jsonl(self.cfg.run_dir / "metrics.jsonl", record)
        self.trackers.log(record)
        if captured is not None:
            write_samples(self.cfg.run_dir / "samples.jsonl", record["step"], self.problems, self.tokenizer, rolled,
                          rows, captured)
        if hasattr(self.bar, "alarm_lines"):
            self.bar.alarm_lines[:] = [message for _, message in raised]

    def close(self) -> None:
        if not self.main:
            return
        self.trackers.close()
        if self.cfg.log.plots:
            from intro_lite.plots import plot_runs

            try:
                plot_runs([self.cfg.run_dir], self.cfg.run_dir / "plots")
            except Exception as e:  # noqa: BLE001 - a figure must never cost the finished run
                import logging

                logging.getLogger(__name__).warning("plots not drawn: %s", e)
