"""The logprob gap: each step's proof that the adapter vLLM sampled with is the one being trained.

vLLM returns the raw (pre-temperature) logprob of every token it samples (``Row.served_logprobs``);
the policy pass of ``train_step`` already holds what makes the trainer's logprob of the same tokens
(its logits, or for InTRO's chunked loss its last hidden states and the LM head weight). Over the
rollout tokens of the rows trained, the step logs

    logprob_gap_mean = mean_t |log π_vllm(z_t) − log π_trainer(z_t)|,   logprob_gap_max = max_t |…|

Rounding (float32 vs bfloat16, a merged vs a separate LoRA path) and the trainer's 4-bit base explain
a small gap (measured in docs/reliability.md); a stale or unsynced adapter, or a different base,
a large one from the first step (the ``logprob_gap`` alarm, train/alarms.py). Sums over positions in
float64 and one max, so the figures do not depend on micro-batching; data parallel adds the ranks'
sums and counts and takes the largest max (``global_gap``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from intro_lite.train import dist

CHUNK_POSITIONS = 128  # positions whose [C, V] logits are made at a time: never a full [N, V] tensor


@dataclass
class GapSums:
    """Σ|Δ|, the count of positions and max|Δ| over the rows seen so far (this rank's)."""

    total: float = 0.0
    count: int = 0
    max: float = 0.0

    def add(self, gaps: torch.Tensor) -> None:
        if gaps.numel():
            self.total += float(gaps.double().sum())
            self.count += gaps.numel()
            self.max = max(self.max, float(gaps.max()))


def served_positions(chunk: list, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's logprobs as ``[B, T]`` float64 and where they exist (``[B, T]`` bool): the first
    ``len(row.served_logprobs)`` suffix positions of each row that has them."""
    served = torch.zeros((len(chunk), T), dtype=torch.float64)
    where = torch.zeros((len(chunk), T), dtype=torch.bool)
    for b, row in enumerate(chunk):
        lps = row.served_logprobs or []
        if len(lps) > len(row.suffix):
            raise ValueError(f"row {b}: {len(lps)} served logprobs for {len(row.suffix)} suffix tokens")
        served[b, : len(lps)] = torch.tensor(lps, dtype=torch.float64)
        where[b, : len(lps)] = True
    return served.to(device), where.to(device)


@torch.no_grad()
def trainer_logprobs(inputs, where: torch.Tensor, chunk_size: int = CHUNK_POSITIONS) -> torch.Tensor:
    """log π_trainer(tokens[b, t]) at the positions ``where`` (row-major, flat ``[N]``), from
    ``inputs.policy_logits`` or, when the objective takes hidden states, ``inputs.policy_hidden`` and
    ``inputs.lm_head_weight``: logits made ``chunk_size`` positions at a time, in at least float32
    (float64 stays float64), log p = logit of the token − logsumexp of the row."""
    b, t = where.nonzero(as_tuple=True)
    own = inputs.tokens[b, t].long()
    if inputs.policy_logits is not None:
        source, weight = inputs.policy_logits.detach(), None
    else:
        source, weight = inputs.policy_hidden.detach(), inputs.lm_head_weight.detach()
    dtype = torch.promote_types(source.dtype if weight is None else torch.promote_types(source.dtype, weight.dtype),
                                torch.float32)
    out = torch.empty(b.numel(), dtype=dtype, device=source.device)
    for s in range(0, b.numel(), chunk_size):
        e = min(s + chunk_size, b.numel())
        rows = source[b[s:e], t[s:e]].to(dtype)  # [C, V] logits or [C, H] hidden states
        logits = rows if weight is None else rows @ weight.to(dtype).t()
        out[s:e] = logits.gather(1, own[s:e, None]).squeeze(1) - torch.logsumexp(logits, 1)
    return out


@torch.no_grad()
def chunk_gaps(inputs, chunk: list) -> torch.Tensor:
    """|log π_vllm − log π_trainer| at every served position of the micro-batch ``chunk`` (flat, float64)."""
    served, where = served_positions(chunk, inputs.tokens.shape[1], inputs.tokens.device)
    if not bool(where.any()):
        return served.new_zeros(0)
    return (served[where] - trainer_logprobs(inputs, where).double()).abs()


def global_gap(sums: GapSums) -> tuple[float | None, float | None]:
    """(mean, max) over every rank's served positions; (None, None) if no rank had one (SFT, nothing trained)."""
    total, count = dist.all_reduce_sum([sums.total, float(sums.count)])
    if not count:
        return None, None
    top = max(m for m in dist.all_gather_objects(sums.max if sums.count else float("-inf")))
    return total / count, top
