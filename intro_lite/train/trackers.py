"""Experiment trackers beside metrics.jsonl: TensorBoard (torch.utils.tensorboard), and W&B / trackio
when installed and asked for (`[log]`). Every numeric field of a step's record is one scalar."""

from __future__ import annotations

import dataclasses


def numeric_fields(record: dict) -> dict[str, float]:
    """The record's numbers (bools as 0/1); nulls, strings and lists are left out."""
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}


class Trackers:
    def __init__(self, cfg, start: int = 0):
        self.tb = self.wandb = self.trackio = None
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resume re-runs the steps after its checkpoint; TensorBoard drops their old events
            self.tb = SummaryWriter(log_dir=str(cfg.run_dir / "tensorboard"), purge_step=start + 1 if start else None)
        settings = dataclasses.asdict(cfg)
        if cfg.log.wandb:  # validate() refused the key if wandb is missing
            import wandb

            self.wandb = wandb.init(project="intro-lite", name=cfg.name, config=settings, dir=str(cfg.run_dir))
        if cfg.log.trackio:
            import trackio

            self.trackio = trackio.init(project="intro-lite", name=cfg.name, config=settings)

    def log(self, record: dict) -> None:
        values, step = numeric_fields(record), record["step"]
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)
        if self.trackio is not None:
            self.trackio.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.trackio is not None:
            self.trackio.finish()
