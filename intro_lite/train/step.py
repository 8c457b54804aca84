"""One optimizer step over a step's rows: micro-batches, passes, loss, backward, non-finite guard, step."""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import torch

from intro_lite.errors import TrainingAborted
from intro_lite.objectives import BatchInfo, Row
from intro_lite.train import dist, faults
from intro_lite.train.gap import GapSums, chunk_gaps, global_gap
from intro_lite.train.passes import PassSetup, forward_passes


@dataclass
class StepResult:
    loss: float  # the full-batch loss (sum of micro-batch shares)
    grad_norm: float  # before clipping
    stats: dict  # the objective's stat_keys; null if nothing was trained
    nonfinite_streak: int  # 0 = the optimizer stepped; else non-finite steps in a row (this one skipped)
    # mean and max |log π_vllm − log π_trainer| over the rollout tokens trained (train/gap.py); None if none
    logprob_gap_mean: float | None = None
    logprob_gap_max: float | None = None


def train_step(setup: PassSetup, optimizer, rows: list[Row], *, micro_batch_size: int, max_grad_norm: float,
               generator_seed: int, step: int = 0, nonfinite_streak: int = 0, max_nonfinite_steps: int = 0,
               timer=None) -> StepResult:
    """Forward passes, the objective's loss and backward for each micro-batch (gradients accumulate),
    then clip and step the optimizer unless the loss or gradient is not finite.

    Data parallel (train/dist.py): `rows` are this rank's share of the step's rows, and the loss is
    the one of all ranks' rows together: the batch facts (BatchInfo) and the row count that scales
    each micro-batch are global, the gradients are summed over the ranks before clipping, and the
    returned loss and stats are the global ones on every rank. Row i of the step (counting every
    rank's rows in rank order) draws its random numbers (InTRO's candidates) from the seed
    `generator_seed + i`, so they do not depend on how rows are split into micro-batches or ranks.
    The logprob gap of the rows' served tokens (train/gap.py) comes from the same policy pass, no grad."""
    objective, needs, timer = setup.objective, setup.needs, timer or (lambda name: contextlib.nullcontext())
    batch, first = global_batch(rows)
    stats: dict[str, float | None] = dict.fromkeys(objective.stat_keys)  # null if nothing trained
    loss_total, n_rows, row, gap = 0.0, len(batch.lengths), first, GapSums()
    setup.model.train()
    for c, chunk in enumerate(micro_batches(rows, micro_batch_size, whole_groups=needs.whole_groups)):
        with timer("forward"):
            inputs = forward_passes(setup, chunk)
            inputs.batch = batch if needs.batch_totals else None
            inputs.row_seeds = generator_seed + torch.arange(row, row + len(chunk))
            gen = torch.Generator(device=inputs.tokens.device).manual_seed(generator_seed + c)
            loss, chunk_stats = objective.compute(inputs, setup.config, generator=gen)
            gap.add(chunk_gaps(inputs, chunk))  # vLLM's logprobs of the rollout tokens vs this pass's
        row += len(chunk)
        loss = faults.poison_loss(loss, step)
        # Objectives with batch totals return their share of the full-batch loss; the others a row mean.
        share = 1.0 if needs.batch_totals else len(chunk) / n_rows
        with timer("backward"):
            (loss * share).backward()
        loss_total += loss.item() * share
        for k, v in chunk_stats.items():  # counts (n_*) add up; the rest are row-weighted means
            stats[k] = (stats.get(k) or 0.0) + (v if k.startswith("n_") else v * len(chunk) / n_rows)
    faults.on_rank(step)  # the failing-rank tests: this rank raises or stalls while the others wait below
    loss_total, stats = global_figures(loss_total, stats, trained=bool(rows))
    gap_mean, gap_max = global_gap(gap)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if n_rows:  # every rank's gradient summed (a rank without rows adds zeros); none at all: no gradient
        dist.all_reduce_grads(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm).item()
    try:
        streak = nonfinite_guard(loss_total, grad_norm, nonfinite_streak, max_nonfinite_steps, step)
        if streak == 0:
            optimizer.step()  # parameters without a gradient (nothing kept) are left untouched
    finally:  # an aborted step leaves no gradient behind either
        optimizer.zero_grad(set_to_none=True)
    if setup.teacher is not None:  # a lagged teacher follows the policy after each step (train/teacher.py)
        setup.teacher.update(step)
    return StepResult(loss_total, grad_norm, stats, streak, gap_mean, gap_max)


def global_batch(rows: list[Row]) -> tuple[BatchInfo, int]:
    """The facts of every rank's rows (in rank order: the step's whole batch) and where this rank's
    first row sits in it. Group ids are the prompts' positions in the step's global batch."""
    parts = dist.all_gather_objects([(r.n_loss, r.reward, r.group) for r in rows])
    every = [x for part in parts for x in part]
    batch = BatchInfo(lengths=torch.tensor([x[0] for x in every]), rewards=torch.tensor([x[1] for x in every]),
                      group_ids=torch.tensor([x[2] for x in every]))
    return batch, sum(len(part) for part in parts[: dist.rank()])


def global_figures(loss: float, stats: dict, *, trained: bool) -> tuple[float, dict]:
    """The step's loss and stats summed over the ranks (each rank's are already its share of the
    global figure); a stat stays null only if no rank trained anything."""
    if dist.world() == 1:
        return loss, stats
    keys = list(stats)
    sums = dist.all_reduce_sum([loss, float(trained), *[stats[k] or 0.0 for k in keys]])
    return sums[0], {k: (v if sums[1] else None) for k, v in zip(keys, sums[2:])}


def micro_batches(rows: list[Row], size: int, *, whole_groups: bool):
    """Chunks of at most `size` rows; with `whole_groups`, never split a prompt's rows (at least one group)."""
    if not whole_groups:
        yield from (rows[i : i + size] for i in range(0, len(rows), size))
        return
    chunk: list[Row] = []
    for group in itertools.groupby(rows, key=lambda r: r.group):
        members = list(group[1])
        if chunk and len(chunk) + len(members) > size:
            yield chunk
            chunk = []
        chunk += members
    if chunk:
        yield chunk


def nonfinite_guard(loss: float, grad_norm: float, streak: int, limit: int, step: int) -> int:
    """0 if the step is finite; else the count of non-finite steps in a row (that step is skipped),
    aborting once more than `limit` come in a row: the run is diverging, not hitting a fluke batch."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return 0
    if streak + 1 > limit:
        raise TrainingAborted(f"step {step}: loss or gradient not finite for {streak + 1} steps in a row "
                              f"(train.max_nonfinite_steps = {limit}); lower train.lr or check the data")
    return streak + 1
