"""Per-step timing, the metrics.jsonl record, and the progress bar."""

from __future__ import annotations

import time

import torch


class Timer:
    def __init__(self):
        self.totals: dict[str, float] = dict.fromkeys(("rollout", "grading", "forward", "backward", "sync"), 0.0)
        self.t0 = time.perf_counter()

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                # also a torch.profiler range, so a profile of the loop splits by phase (benchmarks/step_vs_trl.py --profile)
                self.range = torch.profiler.record_function(name).__enter__()
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.totals[name] = timer.totals.get(name, 0.0) + time.perf_counter() - self.t
                self.range.__exit__(*exc)

        return _Span()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def step_record(step: int, lr: float, rollouts, result, rows, timer: Timer, *, version: int, rollout_tokens: int) -> dict:
    """One metrics.jsonl line. `rollouts` is None when the objective rolled nothing out (SFT): the
    rollout keys are then null and kept_fraction counts trained rows over prompts."""
    trained_tokens = sum(r.n_loss for r in rows)
    if rollouts is not None:
        samples, correct, grades, G = rollouts.samples, rollouts.correct, rollouts.grades, rollouts.group_size
        lengths = [len(s.token_ids) for s in samples]
        groups_correct = [any(correct[j : j + G]) for j in range(0, len(correct), G)]
        rollout_keys = {
            "rollout_accuracy": sum(correct) / len(correct),
            "kept_fraction": len(rows) / len(samples),
            "prompts_no_correct": groups_correct.count(False),
            "mean_length": sum(lengths) / len(lengths),
            "max_length": max(lengths),
            "truncated_fraction": sum(s.finish_reason == "length" for s in samples) / len(samples),
            "grader_timeouts": sum(g.status == "timeout" for g in grades),
            "reward_errors": sum(g.status == "error" for g in grades),  # a reward function raised (or math-verify crashed)
            "rollout_reward_mean": sum(g.value for g in grades) / len(grades),
        }
    else:
        lengths = []
        rollout_keys = {"rollout_accuracy": None, "kept_fraction": len(rows) / max(len(set(r.prompt for r in rows)), 1),
                        "prompts_no_correct": None, "mean_length": None, "max_length": None,
                        "truncated_fraction": None, "grader_timeouts": None,
                        "reward_errors": None, "rollout_reward_mean": None}
    return {
        "step": step,
        "lr": lr,
        **rollout_keys,
        "loss": result.loss,
        "grad_norm": result.grad_norm,
        "skipped_nonfinite": result.nonfinite_streak > 0,
        # |log π_vllm − log π_trainer| over the rollout tokens trained: the served adapter is the trained one
        "logprob_gap_mean": result.logprob_gap_mean,
        "logprob_gap_max": result.logprob_gap_max,
        **result.stats,
        **{f"time_{k}": v for k, v in timer.totals.items()},
        "tokens_per_second": (sum(lengths) + trained_tokens) / max(timer.elapsed(), 1e-9),
        "adapter_version": version,
        "rollout_tokens_total": rollout_tokens,
    }


def progress_info(record: dict) -> str:
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    return (f"acc {fmt(record['rollout_accuracy'], '.2f')} len {fmt(record['mean_length'], '.0f')} "
            f"loss {record['loss']:.3f} |g| {record['grad_norm']:.2f} gap {fmt(record.get('logprob_gap_mean'), '.1e')}")


def make_progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class ProgressWithAlarms(Progress):
        """The bar, and under it the step's alarms in yellow (train/alarms.py)."""

        def __init__(self, *columns, **kw):
            self.alarm_lines: list[str] = []
            super().__init__(*columns, **kw)

        def get_renderables(self):
            yield self.make_tasks_table(self.tasks)
            for line in self.alarm_lines:
                yield Text(line, style="yellow")

    bar = ProgressWithAlarms(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             disable=not enabled)
    return bar
