"""Tensor helpers shared by the objectives.

Conventions shared by every objective:

* Logits are ``[B, T, V]`` with position t predicting ``tokens[:, t]``; ``mask`` ``[B, T]`` is 1 on
  the tokens that count. Tokens under mask 0 are never read (padding such as -100 is fine), and
  padding positions get exactly zero gradient.
* Log-probs and entropies are computed in at least float32 whatever the model dtype.
* Rewards, advantages, weights, old/reference log-probs and probe scores are detached: gradient
  reaches ``policy_logits`` only.
* Micro-batching: every loss is a sum over this micro-batch's rows divided by a normaliser of the
  whole optimizer batch, taken from ``batch`` (a :class:`BatchInfo` of every row trained this
  step). Summing the losses of the micro-batches then gives exactly the full-batch loss and
  gradient. ``batch=None`` means the micro-batch is the whole batch. Group statistics that
  depend only on rewards are looked up in ``batch`` by group id, so such micro-batches may split
  a group; LaTRO and RePro need whole groups per micro-batch (``Needs.whole_groups``).
* Stats are python floats; keys starting ``n_`` are counts (the loop adds them up over
  micro-batches), the others are means over this micro-batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from intro_lite.objectives.base import BatchInfo, ObjectiveInputs

STD_EPS = 1e-4  # added to group reward stds (TRL, the IAPO code); every objective's default


def float_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def check_shapes(logits: Tensor, tokens: Tensor, mask: Tensor) -> None:
    if logits.dim() != 3 or tokens.shape != logits.shape[:2] or mask.shape != tokens.shape:
        raise ValueError(
            f"expected logits [B, T, V] with tokens and mask [B, T]; got {tuple(logits.shape)}, "
            f"{tuple(tokens.shape)}, {tuple(mask.shape)}"
        )


def token_logprobs(logits: Tensor, tokens: Tensor, mask: Tensor, *, with_entropy: bool = False):
    """``log softmax(logits)[b, t, tokens[b, t]]`` as ``[B, T]``, 0 where ``mask`` is 0; with
    ``with_entropy`` also the (detached) entropy ``[B, T]`` from the same softmax.

    Only mask positions go through the softmax, so padding logits (even inf/nan) cost nothing
    and get exactly zero gradient."""
    mask = mask.bool()
    dtype = float_dtype(logits)
    full = F.log_softmax(logits[mask], dim=-1, dtype=dtype)  # [N, V]
    picked = full.gather(1, tokens[mask].long().unsqueeze(1)).squeeze(1)
    logp = torch.zeros(mask.shape, dtype=dtype, device=logits.device).masked_scatter(mask, picked)
    if not with_entropy:
        return logp
    with torch.no_grad():
        ent = -(full.detach().exp() * full.detach()).sum(-1)
        entropy = torch.zeros(mask.shape, dtype=dtype, device=logits.device).masked_scatter(mask, ent)
    return logp, entropy


@torch.no_grad()
def token_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Entropy of softmax(logits) at each position, ``[B, T]``, detached, 0 where ``mask`` is 0."""
    mask = mask.bool()
    dtype = float_dtype(logits)
    logp = F.log_softmax(logits.detach()[mask], dim=-1, dtype=dtype)
    ent = -(logp.exp() * logp).sum(-1)
    return torch.zeros(mask.shape, dtype=dtype, device=logits.device).masked_scatter(mask, ent)


def reference_logprobs_of(inputs: ObjectiveInputs, mask: Tensor) -> Tensor | None:
    """log π_ref(tokens) ``[B, T]`` of the reference pass (None without one), detached, 0 off the mask."""
    if inputs.reference_logprobs is None:
        return None
    return inputs.reference_logprobs.detach().masked_fill(~mask.bool(), 0.0)


def surrogate_args(inputs: ObjectiveInputs) -> dict:
    """The keyword inputs of the clipped-surrogate losses: π_old and π_ref log-probs, the batch info."""
    return dict(sampled_logprobs=inputs.sampled_logprobs, reference_logprobs=reference_logprobs_of(inputs, inputs.mask),
                batch=inputs.batch)


def group_slots(group_ids: Tensor, universe: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sorted unique ids of ``universe``, each universe row's slot, each ``group_ids`` row's slot)."""
    uniq, universe_slot = torch.unique(universe, sorted=True, return_inverse=True)
    slot = torch.searchsorted(uniq, group_ids)
    if bool((slot >= uniq.numel()).any()) or bool((uniq[slot.clamp(max=uniq.numel() - 1)] != group_ids).any()):
        raise ValueError("a micro-batch row has a group id that is not in the batch info")
    return uniq, universe_slot, slot


def universe_of(rewards: Tensor | None, group_ids: Tensor | None, batch: BatchInfo | None) -> tuple[Tensor, Tensor]:
    if batch is None:
        return rewards, group_ids
    if batch.rewards is None or batch.group_ids is None:
        raise ValueError("batch info needs rewards and group_ids for group statistics")
    return batch.rewards, batch.group_ids


@torch.no_grad()
def group_reward_stats(
    rewards: Tensor, group_ids: Tensor, batch: BatchInfo | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row: its group's reward mean, std (Bessel-corrected, 0 for a group of one), size, and
    whether the group has zero variance (all rewards equal, compared exactly). Groups are taken
    from ``batch`` when given (so a micro-batch may hold part of a group), else from the rows."""
    all_r, all_g = universe_of(rewards, group_ids, batch)
    all_r = all_r.detach().to(torch.float64)
    uniq, uslot, slot = group_slots(group_ids.to(all_g.device), all_g)
    n = uniq.numel()
    counts = torch.zeros(n, dtype=torch.float64, device=all_r.device).index_add_(0, uslot, torch.ones_like(all_r))
    mean = torch.zeros_like(counts).index_add_(0, uslot, all_r) / counts
    sq = torch.zeros_like(counts).index_add_(0, uslot, (all_r - mean[uslot]) ** 2)
    std = torch.where(counts > 1, (sq / (counts - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    hi = torch.full_like(counts, -math.inf).scatter_reduce(0, uslot, all_r, "amax")
    lo = torch.full_like(counts, math.inf).scatter_reduce(0, uslot, all_r, "amin")
    dtype = float_dtype(rewards)
    return mean[slot].to(dtype), std[slot].to(dtype), counts[slot].to(dtype), (hi == lo)[slot]


@torch.no_grad()
def grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    scale_rewards: bool = True,
    std_eps: float = STD_EPS,
    batch: BatchInfo | None = None,
) -> tuple[Tensor, Tensor]:
    """Â_i = (r_i − mean_g r)/(std_g r + std_eps) (``scale_rewards``) or r_i − mean_g r (Dr. GRPO).

    Returns (advantages [B], zero-variance flag [B]); zero-variance groups get exactly 0.
    std is Bessel-corrected and ``std_eps`` (``STD_EPS``) is added, as TRL and the IAPO code do [infer:
    DeepSeekMath writes the plain std]."""
    mean, std, _, flat = group_reward_stats(rewards, group_ids, batch)
    adv = rewards.detach().to(mean.dtype) - mean
    if scale_rewards:
        adv = adv / (std + std_eps)
    return torch.where(flat, torch.zeros_like(adv), adv), flat


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's per-token ``min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A)`` with ρ = exp(logp − sg(old_logp)).

    Returns (objective, ρ, clipped) where ``clipped`` marks the tokens whose objective is the
    constant clipped branch (no gradient). The log-ratio is clamped to ±20 before exp as verl
    does, so off-policy garbage cannot overflow [infer]."""
    log_ratio = (logp - old_logp.detach()).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped_val = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    return torch.minimum(unclipped, clipped_val), ratio, clipped_val < unclipped


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref): π_ref/π_θ − log(π_ref/π_θ) − 1 (≥ 0).
    Gradient flows through ``logp`` only."""
    d = ref_logp.detach() - logp
    return d.exp() - d - 1.0


AGGREGATIONS = ("grpo", "bnpo", "dr_grpo")


def aggregate(
    per_token_loss: Tensor,
    mask: Tensor,
    mode: str,
    *,
    n_sequences: float,
    n_tokens: float,
    max_completion_length: int | None = None,
) -> Tensor:
    """Sum this micro-batch's masked per-token losses with the whole batch's normaliser (TRL names):

    * ``grpo``:    Σ_i (1/|o_i|) Σ_t ℓ_it / n_sequences   (sequence mean, then mean over sequences)
    * ``bnpo``:    Σ_i Σ_t ℓ_it / n_tokens                (token mean over the batch; DAPO)
    * ``dr_grpo``: Σ_i Σ_t ℓ_it / (n_sequences · max_completion_length)
    """
    mask = mask.bool()
    masked = per_token_loss.masked_fill(~mask, 0.0)
    if mode == "grpo":
        lengths = mask.sum(1).clamp(min=1).to(masked.dtype)
        return (masked.sum(1) / lengths).sum() / max(n_sequences, 1)
    if mode == "bnpo":
        return masked.sum() / max(n_tokens, 1)
    if mode == "dr_grpo":
        if not max_completion_length:
            raise ValueError("loss_aggregation 'dr_grpo' needs max_completion_length (the rollout max_new_tokens)")
        return masked.sum() / (max(n_sequences, 1) * max_completion_length)
    raise ValueError(f"loss_aggregation must be one of {AGGREGATIONS}, got {mode!r}")


def batch_info(batch: BatchInfo | None, mask: Tensor, rewards: Tensor | None, group_ids: Tensor | None) -> BatchInfo:
    """The whole-batch facts, or this micro-batch's own when it is the whole batch."""
    if batch is not None:
        return batch
    return BatchInfo(lengths=mask.bool().sum(1), rewards=rewards, group_ids=group_ids)


def require(value, what: str, objective: str):
    if value is None:
        raise ValueError(f"{objective} needs {what}")
    return value


def check_whole_groups(group_ids: Tensor, batch: BatchInfo | None, objective: str) -> None:
    """Advantages computed from forward outputs (LaTRO, RePro) need all of a group's rows at once."""
    if batch is None or batch.group_ids is None:
        return
    here, here_counts = torch.unique(group_ids, return_counts=True)
    total = (batch.group_ids.to(group_ids.device).unsqueeze(0) == here.unsqueeze(1)).sum(1)
    if not torch.equal(here_counts, total):
        raise ValueError(f"{objective} needs every row of a group in one micro-batch (Needs.whole_groups)")


def masked_mean(x: Tensor, mask: Tensor) -> float:
    mask = mask.bool()
    n = int(mask.sum())
    return float(x[mask].float().mean()) if n else 0.0


def zero_loss(policy_logits: Tensor) -> Tensor:
    """A zero still connected to the graph, so backward() and gradient accumulation just work."""
    return policy_logits.sum() * 0.0


def surrogate_loss(
    logp: Tensor,
    entropy: Tensor,
    mask: Tensor,
    advantages: Tensor,
    *,
    sampled_logprobs: Tensor | None,
    reference_logprobs: Tensor | None,
    beta: float,
    eps_low: float,
    eps_high: float,
    aggregation: str,
    n_sequences: float,
    n_tokens: float,
    max_completion_length: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """−clipped surrogate (+ β·k3 KL), aggregated, from ``logp``/``entropy`` of ``token_logprobs``;
    ``advantages`` ``[B]`` or ``[B, T]``, detached here."""
    mask = mask.bool()
    logp = logp.masked_fill(~mask, 0.0)
    if sampled_logprobs is None:
        old = logp.detach()
    else:
        old = sampled_logprobs.detach().to(logp.dtype).masked_fill(~mask, 0.0)
    adv = advantages.detach().to(logp.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(1).expand_as(logp)
    objective, ratio, clipped = clipped_surrogate(logp, old, adv, eps_low, eps_high)
    per_token = -objective
    kl = None
    if beta != 0.0:
        if reference_logprobs is None:
            raise ValueError("beta != 0 needs the reference pass (reference_logprobs)")
        kl = k3_kl(logp, reference_logprobs.to(logp.dtype))
        per_token = per_token + beta * kl
    elif reference_logprobs is not None:
        kl = k3_kl(logp.detach(), reference_logprobs.to(logp.dtype))
    loss = aggregate(
        per_token, mask, aggregation, n_sequences=n_sequences, n_tokens=n_tokens,
        max_completion_length=max_completion_length,
    )
    stats = {
        "clip_frac": masked_mean(clipped, mask),
        "ratio_mean": masked_mean(ratio.detach(), mask),
        "kl": masked_mean(kl.detach(), mask) if kl is not None else 0.0,
        "entropy": masked_mean(entropy, mask),
        "n_tokens": float(mask.sum()),
    }
    return loss, stats




def group_inputs(inputs: ObjectiveInputs, name: str) -> tuple[Tensor, Tensor]:
    rewards = require(inputs.rewards, "rewards", name)
    group_ids = require(inputs.group_ids, "group_ids", name)
    return rewards, group_ids
