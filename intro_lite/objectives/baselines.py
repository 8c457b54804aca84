"""Baseline objectives of METHODS.md as pure tensor functions, each registered by name.

    sft            golden-solution token-mean NLL                          [paper, seed 001]
    grpo           group-normalised clipped surrogate + k3 KL, 3 aggregations [paper, DeepSeekMath; TRL names]
    dr_grpo        GRPO without std scaling, `dr_grpo` aggregation, β = 0  [code, understand-r1-zero]
    raft++         A = max(r, 0), clipped surrogate, correct samples only  [code, Minimal-RL]
    reinforce_rej  r = ±1, groups with equal rewards dropped              [code, Minimal-RL]
    gpg            −α/Σ|o| Σ Â·log π, α = B/(B − M)                      [code, AMAP-ML/GPG]
    latro          RLOO on sg(log π(y|x⊕z) − β·KL) + answer likelihood    [paper + code, LaTRO]
    iapo           token-wise advantages from answer-uncertainty reduction [code, IAPO (G2RPO)]
    repro          process rewards from gold-answer log-prob trajectories  [paper summary + code, RePro]

Conventions shared by every function here:

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

from intro_lite.objectives import BatchInfo, Needs, ObjectiveInputs, register

# ------------------------------------------------------------------------------------------------
# Shared tensor helpers


def _float_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _check_shapes(logits: Tensor, tokens: Tensor, mask: Tensor) -> None:
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
    dtype = _float_dtype(logits)
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
    dtype = _float_dtype(logits)
    logp = F.log_softmax(logits.detach()[mask], dim=-1, dtype=dtype)
    ent = -(logp.exp() * logp).sum(-1)
    return torch.zeros(mask.shape, dtype=dtype, device=logits.device).masked_scatter(mask, ent)


def _reference_logprobs(inputs: ObjectiveInputs, mask: Tensor) -> Tensor | None:
    """log π_ref(tokens) ``[B, T]`` from whichever reference field the loop filled, detached."""
    if inputs.reference_logprobs is not None:
        return inputs.reference_logprobs.detach().masked_fill(~mask.bool(), 0.0)
    if inputs.reference_logits is not None:
        with torch.no_grad():
            return token_logprobs(inputs.reference_logits.detach(), inputs.tokens, mask)
    return None


def _group_slots(group_ids: Tensor, universe: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sorted unique ids of ``universe``, each universe row's slot, each ``group_ids`` row's slot)."""
    uniq, universe_slot = torch.unique(universe, sorted=True, return_inverse=True)
    slot = torch.searchsorted(uniq, group_ids)
    if bool((slot >= uniq.numel()).any()) or bool((uniq[slot.clamp(max=uniq.numel() - 1)] != group_ids).any()):
        raise ValueError("a micro-batch row has a group id that is not in the batch info")
    return uniq, universe_slot, slot


def _universe(rewards: Tensor | None, group_ids: Tensor | None, batch: BatchInfo | None) -> tuple[Tensor, Tensor]:
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
    all_r, all_g = _universe(rewards, group_ids, batch)
    all_r = all_r.detach().to(torch.float64)
    uniq, uslot, slot = _group_slots(group_ids.to(all_g.device), all_g)
    n = uniq.numel()
    counts = torch.zeros(n, dtype=torch.float64, device=all_r.device).index_add_(0, uslot, torch.ones_like(all_r))
    mean = torch.zeros_like(counts).index_add_(0, uslot, all_r) / counts
    sq = torch.zeros_like(counts).index_add_(0, uslot, (all_r - mean[uslot]) ** 2)
    std = torch.where(counts > 1, (sq / (counts - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    hi = torch.full_like(counts, -math.inf).scatter_reduce(0, uslot, all_r, "amax")
    lo = torch.full_like(counts, math.inf).scatter_reduce(0, uslot, all_r, "amin")
    dtype = _float_dtype(rewards)
    return mean[slot].to(dtype), std[slot].to(dtype), counts[slot].to(dtype), (hi == lo)[slot]


@torch.no_grad()
def grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    scale_rewards: bool = True,
    std_eps: float = 1e-4,
    batch: BatchInfo | None = None,
) -> tuple[Tensor, Tensor]:
    """Â_i = (r_i − mean_g r)/(std_g r + std_eps) (``scale_rewards``) or r_i − mean_g r (Dr. GRPO).

    Returns (advantages [B], zero-variance flag [B]); zero-variance groups get exactly 0.
    std is Bessel-corrected and ``std_eps = 1e-4`` is added, as TRL and the IAPO code do [infer:
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


def _batch_info(batch: BatchInfo | None, mask: Tensor, rewards: Tensor | None, group_ids: Tensor | None) -> BatchInfo:
    """The whole-batch facts, or this micro-batch's own when it is the whole batch."""
    if batch is not None:
        return batch
    return BatchInfo(lengths=mask.bool().sum(1), rewards=rewards, group_ids=group_ids)


def _require(value, what: str, objective: str):
    if value is None:
        raise ValueError(f"{objective} needs {what}")
    return value


def _check_whole_groups(group_ids: Tensor, batch: BatchInfo | None, objective: str) -> None:
    """Advantages computed from forward outputs (LaTRO, RePro) need all of a group's rows at once."""
    if batch is None or batch.group_ids is None:
        return
    here, here_counts = torch.unique(group_ids, return_counts=True)
    total = (batch.group_ids.to(group_ids.device).unsqueeze(0) == here.unsqueeze(1)).sum(1)
    if not torch.equal(here_counts, total):
        raise ValueError(f"{objective} needs every row of a group in one micro-batch (Needs.whole_groups)")


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    mask = mask.bool()
    n = int(mask.sum())
    return float(x[mask].float().mean()) if n else 0.0


def _zero_loss(policy_logits: Tensor) -> Tensor:
    """A zero still connected to the graph, so backward() and gradient accumulation just work."""
    return policy_logits.sum() * 0.0


def _surrogate_loss(
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
            raise ValueError("beta != 0 needs the reference pass (reference_logprobs or reference_logits)")
        kl = k3_kl(logp, reference_logprobs.to(logp.dtype))
        per_token = per_token + beta * kl
    elif reference_logprobs is not None:
        kl = k3_kl(logp.detach(), reference_logprobs.to(logp.dtype))
    loss = aggregate(
        per_token, mask, aggregation, n_sequences=n_sequences, n_tokens=n_tokens,
        max_completion_length=max_completion_length,
    )
    stats = {
        "clip_frac": _masked_mean(clipped, mask),
        "ratio_mean": _masked_mean(ratio.detach(), mask),
        "kl": _masked_mean(kl.detach(), mask) if kl is not None else 0.0,
        "entropy": _masked_mean(entropy, mask),
        "n_tokens": float(mask.sum()),
    }
    return loss, stats


# ------------------------------------------------------------------------------------------------
# SFT


SFT_STAT_KEYS = ("nll", "n_tokens")


def sft_loss(
    policy_logits: Tensor, tokens: Tensor, mask: Tensor, *, batch: BatchInfo | None = None
) -> tuple[Tensor, dict[str, float]]:
    """SFT on the golden solution z* [paper]: loss = −Σ log π(z*_t | x, z*<t) / N_tokens, token mean
    over the whole batch (N_tokens = Σ ``batch.lengths``)."""
    _check_shapes(policy_logits, tokens, mask)
    mask = mask.bool()
    info = _batch_info(batch, mask, None, None)
    n_total = float(info.lengths.sum())
    if n_total == 0 or not bool(mask.any()):
        return _zero_loss(policy_logits), dict.fromkeys(SFT_STAT_KEYS, 0.0)
    logp = token_logprobs(policy_logits, tokens, mask)
    loss = -logp.sum() / n_total
    return loss, {"nll": -_masked_mean(logp.detach(), mask), "n_tokens": float(mask.sum())}


@register("sft")
class SFT:
    needs = Needs(policy_grad=True, gold_solution=True, batch_totals=True)
    stat_keys = SFT_STAT_KEYS

    def compute(self, inputs: ObjectiveInputs, *, generator=None) -> tuple[Tensor, dict[str, float]]:
        return sft_loss(inputs.policy_logits, inputs.tokens, inputs.mask, batch=inputs.batch)


# ------------------------------------------------------------------------------------------------
# GRPO and Dr. GRPO


GRPO_STAT_KEYS = (
    "reward_mean", "adv_abs_mean", "zero_var_frac", "clip_frac", "ratio_mean", "kl", "entropy",
    "n_tokens", "n_sequences",
)


def grpo_loss(
    policy_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    *,
    sampled_logprobs: Tensor | None = None,
    reference_logprobs: Tensor | None = None,
    batch: BatchInfo | None = None,
    max_completion_length: int | None = None,
    beta: float = 0.04,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_aggregation: str = "grpo",
    scale_rewards: bool = True,
    std_eps: float = 1e-4,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO [paper, DeepSeekMath], minimised::

        Â_i = (r_i − mean_g r)/(std_g r + std_eps)       (r_i − mean_g r if not scale_rewards)
        ρ   = π_θ/sg(π_old)  (π_old = sg(π_θ) without sampled_logprobs: ρ = 1, gradient kept)
        ℓ_it = −min(ρ Â_i, clip(ρ, 1−ε, 1+ε_high) Â_i) + β·(π_ref/π_θ − log(π_ref/π_θ) − 1)
        loss = aggregate(ℓ, loss_aggregation)            (grpo | bnpo | dr_grpo, see ``aggregate``)

    ε = 0.2, β = 0.04 [paper]; ε_high defaults to ε; ``std_eps`` see ``grpo_advantages`` [infer].
    Whole-batch normalisers: n_sequences = rows of ``batch``, n_tokens = Σ ``batch.lengths``.
    """
    _check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    mask = mask.bool()
    info = _batch_info(batch, mask, rewards, group_ids)
    adv, flat = grpo_advantages(rewards, group_ids, scale_rewards=scale_rewards, std_eps=std_eps, batch=batch)
    logp, entropy = token_logprobs(policy_logits, tokens, mask, with_entropy=True)
    loss, core = _surrogate_loss(
        logp, entropy, mask, adv,
        sampled_logprobs=sampled_logprobs, reference_logprobs=reference_logprobs, beta=beta,
        eps_low=epsilon, eps_high=epsilon if epsilon_high is None else epsilon_high,
        aggregation=loss_aggregation, n_sequences=float(info.lengths.numel()), n_tokens=float(info.lengths.sum()),
        max_completion_length=max_completion_length,
    )
    stats = {
        "reward_mean": float(rewards.float().mean()),
        "adv_abs_mean": float(adv.abs().float().mean()),
        "zero_var_frac": float(flat.float().mean()),
        **core,
        "n_sequences": float(tokens.shape[0]),
    }
    return loss, stats


def _group_inputs(inputs: ObjectiveInputs, name: str) -> tuple[Tensor, Tensor]:
    rewards = _require(inputs.rewards, "rewards", name)
    group_ids = _require(inputs.group_ids, "group_ids (Needs.groups)", name)
    return rewards, group_ids


@register("grpo")
class GRPO:
    needs = Needs(policy_grad=True, reference=True, groups=True, batch_totals=True)
    stat_keys = GRPO_STAT_KEYS
    defaults = dict(
        beta=0.04, epsilon=0.2, epsilon_high=None, loss_aggregation="grpo", scale_rewards=True, std_eps=1e-4
    )

    def needs_for(self, *, beta: float | None = None, **_) -> Needs:
        beta = self.defaults["beta"] if beta is None else beta
        return Needs(policy_grad=True, reference=beta != 0.0, groups=True, batch_totals=True)

    def compute(self, inputs: ObjectiveInputs, *, generator=None, **config) -> tuple[Tensor, dict[str, float]]:
        unknown = set(config) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown config keys {sorted(unknown)}")
        kwargs = {**self.defaults, **config}
        rewards, group_ids = _group_inputs(inputs, self.name)
        return grpo_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, rewards, group_ids,
            sampled_logprobs=inputs.sampled_logprobs, reference_logprobs=_reference_logprobs(inputs, inputs.mask),
            batch=inputs.batch, max_completion_length=inputs.max_completion_length, **kwargs,
        )


@register("dr_grpo")
class DrGRPO(GRPO):
    """Dr. GRPO [code, sail-sg/understand-r1-zero]: Â = r − mean (no std), `dr_grpo` aggregation, β = 0."""

    needs = Needs(policy_grad=True, groups=True, batch_totals=True)
    defaults = dict(
        beta=0.0, epsilon=0.2, epsilon_high=None, loss_aggregation="dr_grpo", scale_rewards=False, std_eps=1e-4
    )


# ------------------------------------------------------------------------------------------------
# RAFT++ and Reinforce-Rej


RAFT_STAT_KEYS = ("kept_frac", "clip_frac", "ratio_mean", "kl", "entropy", "n_tokens", "n_sequences")


def raft_pp_loss(
    policy_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    rewards: Tensor,
    *,
    sampled_logprobs: Tensor | None = None,
    reference_logprobs: Tensor | None = None,
    batch: BatchInfo | None = None,
    epsilon: float = 0.2,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """RAFT++ [code, Minimal-RL]: A_i = max(r_i, 0); −clipped surrogate (ε = 0.2), token mean over
    the tokens of the correct samples only (r > 0) — the others carry no gradient and do not count
    in the normaliser (N = Σ ``batch.lengths`` over rows with reward > 0). β > 0 adds the k3 KL
    (off by default, no reference pass)."""
    _check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    info = _batch_info(batch, mask, rewards, None)
    info_rewards = _require(info.rewards, "batch.rewards", "raft++")
    n_total = float(info.lengths[info_rewards.to(info.lengths.device) > 0].sum())
    correct = rewards.detach() > 0
    train_mask = mask.bool() & correct.unsqueeze(1).to(mask.device)
    stats_extra = {"kept_frac": float(correct.float().mean()), "n_sequences": float(correct.sum())}
    if n_total == 0 or not bool(train_mask.any()):
        zero = dict.fromkeys(RAFT_STAT_KEYS, 0.0)
        return _zero_loss(policy_logits), {**zero, "kept_frac": stats_extra["kept_frac"]}
    adv = rewards.detach().clamp(min=0)
    logp, entropy = token_logprobs(policy_logits, tokens, train_mask, with_entropy=True)
    loss, core = _surrogate_loss(
        logp, entropy, train_mask, adv, sampled_logprobs=sampled_logprobs,
        reference_logprobs=reference_logprobs, beta=beta, eps_low=epsilon, eps_high=epsilon,
        aggregation="bnpo", n_sequences=0, n_tokens=n_total,
    )
    return loss, {"kept_frac": stats_extra["kept_frac"], **core, "n_sequences": stats_extra["n_sequences"]}


@register("raft++")
class RAFTpp:
    needs = Needs(policy_grad=True, kept_only=True, batch_totals=True)
    stat_keys = RAFT_STAT_KEYS

    def needs_for(self, *, beta: float = 0.0, **_) -> Needs:
        return Needs(policy_grad=True, reference=beta != 0.0, kept_only=True, batch_totals=True)

    def compute(
        self, inputs: ObjectiveInputs, *, epsilon: float = 0.2, beta: float = 0.0, generator=None
    ) -> tuple[Tensor, dict[str, float]]:
        rewards = _require(inputs.rewards, "rewards", self.name)
        return raft_pp_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, rewards,
            sampled_logprobs=inputs.sampled_logprobs, reference_logprobs=_reference_logprobs(inputs, inputs.mask),
            batch=inputs.batch, epsilon=epsilon, beta=beta,
        )


REJ_STAT_KEYS = ("dropped_frac", "clip_frac", "ratio_mean", "kl", "entropy", "n_tokens", "n_sequences")


@torch.no_grad()
def reinforce_rej_advantages(
    rewards: Tensor, group_ids: Tensor, batch: BatchInfo | None = None
) -> tuple[Tensor, Tensor]:
    """Reinforce-Rej [code, Minimal-RL]: r' = +1 if correct (r > 0) else −1, A_i = r'_i; rows of
    groups whose rewards are all equal are dropped. Returns (A [B], kept [B])."""
    _, _, _, flat = group_reward_stats(rewards, group_ids, batch)
    signed = torch.where(rewards.detach() > 0, 1.0, -1.0).to(_float_dtype(rewards))
    return torch.where(flat, torch.zeros_like(signed), signed), ~flat


def reinforce_rej_loss(
    policy_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    *,
    sampled_logprobs: Tensor | None = None,
    reference_logprobs: Tensor | None = None,
    batch: BatchInfo | None = None,
    epsilon: float = 0.2,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Reinforce-Rej: A = ±1 from ``reinforce_rej_advantages``; −clipped surrogate (ε = 0.2) token
    mean over the kept groups' tokens (N = Σ ``batch.lengths`` over rows of non-flat groups)
    [infer: same surrogate and aggregation as RAFT++]."""
    _check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    info = _batch_info(batch, mask, rewards, group_ids)
    all_r, all_g = _universe(rewards, group_ids, batch)
    _, _, _, flat_all = group_reward_stats(all_r, all_g, batch)
    n_total = float(info.lengths[~flat_all.to(info.lengths.device)].sum())
    adv, kept = reinforce_rej_advantages(rewards, group_ids, batch)
    train_mask = mask.bool() & kept.unsqueeze(1).to(mask.device)
    dropped_frac = float((~kept).float().mean())
    if n_total == 0 or not bool(train_mask.any()):
        return _zero_loss(policy_logits), {**dict.fromkeys(REJ_STAT_KEYS, 0.0), "dropped_frac": dropped_frac}
    logp, entropy = token_logprobs(policy_logits, tokens, train_mask, with_entropy=True)
    loss, core = _surrogate_loss(
        logp, entropy, train_mask, adv, sampled_logprobs=sampled_logprobs,
        reference_logprobs=reference_logprobs, beta=beta, eps_low=epsilon, eps_high=epsilon,
        aggregation="bnpo", n_sequences=0, n_tokens=n_total,
    )
    return loss, {"dropped_frac": dropped_frac, **core, "n_sequences": float(kept.sum())}


@register("reinforce_rej")
class ReinforceRej:
    needs = Needs(policy_grad=True, groups=True, batch_totals=True)
    stat_keys = REJ_STAT_KEYS

    def needs_for(self, *, beta: float = 0.0, **_) -> Needs:
        return Needs(policy_grad=True, reference=beta != 0.0, groups=True, batch_totals=True)

    def compute(
        self, inputs: ObjectiveInputs, *, epsilon: float = 0.2, beta: float = 0.0, generator=None
    ) -> tuple[Tensor, dict[str, float]]:
        rewards, group_ids = _group_inputs(inputs, self.name)
        return reinforce_rej_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, rewards, group_ids,
            sampled_logprobs=inputs.sampled_logprobs, reference_logprobs=_reference_logprobs(inputs, inputs.mask),
            batch=inputs.batch, epsilon=epsilon, beta=beta,
        )


# ------------------------------------------------------------------------------------------------
# GPG


GPG_STAT_KEYS = ("alpha", "zero_var_frac", "adv_abs_mean", "entropy", "n_tokens", "n_sequences")


@torch.no_grad()
def gpg_alpha(rewards: Tensor, group_ids: Tensor) -> float:
    """α = B/(B − M) over the whole batch, B the number of prompt groups and M the number of
    zero-variance groups (METHODS.md; with equal group sizes this equals the sequence-count form
    #rows/#rows-in-varying-groups). α = 1 when every group is flat (then every Â is 0 anyway)."""
    _, uslot, _ = _group_slots(group_ids[:1], group_ids)
    _, _, _, flat = group_reward_stats(rewards, group_ids)
    n_groups = int(uslot.max()) + 1
    flat_groups = torch.zeros(n_groups, dtype=torch.bool, device=flat.device).scatter_(0, uslot, flat)
    m = int(flat_groups.sum())
    return n_groups / (n_groups - m) if n_groups > m else 1.0


def gpg_loss(
    policy_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    *,
    batch: BatchInfo | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """GPG [code, AMAP-ML/GPG]: loss = −(α/Σ_i|o_i|) Σ_i Σ_t Â_i log π(o_it), Â_i = r_i − mean_g r
    (F_norm = 1), α = ``gpg_alpha`` of the whole batch, Σ|o| = Σ ``batch.lengths`` (all rows).
    No ratio, no clip, no KL. (The optional resampling until ≥ 60 % valid groups is the loop's.)"""
    _check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    mask = mask.bool()
    info = _batch_info(batch, mask, rewards, group_ids)
    all_r, all_g = _universe(rewards, group_ids, batch)
    alpha = gpg_alpha(all_r, all_g)
    adv, flat = grpo_advantages(rewards, group_ids, scale_rewards=False, batch=batch)
    n_total = float(info.lengths.sum())
    logp, entropy = token_logprobs(policy_logits, tokens, mask, with_entropy=True)
    loss = -(alpha / max(n_total, 1.0)) * (adv.to(logp.dtype).unsqueeze(1) * logp).sum()
    stats = {
        "alpha": alpha,
        "zero_var_frac": float(flat.float().mean()),
        "adv_abs_mean": float(adv.abs().float().mean()),
        "entropy": _masked_mean(entropy, mask),
        "n_tokens": float(mask.sum()),
        "n_sequences": float(tokens.shape[0]),
    }
    return loss, stats


@register("gpg")
class GPG:
    needs = Needs(policy_grad=True, groups=True, batch_totals=True)
    stat_keys = GPG_STAT_KEYS

    def compute(self, inputs: ObjectiveInputs, *, generator=None) -> tuple[Tensor, dict[str, float]]:
        rewards, group_ids = _group_inputs(inputs, self.name)
        return gpg_loss(inputs.policy_logits, inputs.tokens, inputs.mask, rewards, group_ids, batch=inputs.batch)


# ------------------------------------------------------------------------------------------------
# LaTRO


LATRO_STAT_KEYS = (
    "answer_logprob", "rationale_logprob", "rationale_kl", "reward_mean", "adv_abs_mean", "n_tokens", "n_sequences",
)
LATRO_ANSWER_MARKERS = ("The answer is", "\\boxed")


@torch.no_grad()
def rloo_advantages(scores: Tensor, group_ids: Tensor) -> Tensor:
    """A_k = r_k − mean_{j≠k} r_j within each group (groups of one get 0)."""
    _, uslot, _ = _group_slots(group_ids[:1], group_ids)
    n = int(uslot.max()) + 1
    scores = scores.detach()
    sums = torch.zeros(n, dtype=scores.dtype, device=scores.device).index_add_(0, uslot, scores)
    counts = torch.zeros(n, dtype=scores.dtype, device=scores.device).index_add_(0, uslot, torch.ones_like(scores))
    c = counts[uslot]
    others = (sums[uslot] - scores) / (c - 1).clamp(min=1)
    return torch.where(c > 1, scores - others, torch.zeros_like(scores))


def latro_loss(
    policy_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    answer_mask: Tensor,
    group_ids: Tensor,
    *,
    reference_logprobs: Tensor | None = None,
    batch: BatchInfo | None = None,
    beta: float = 0.05,
) -> tuple[Tensor, dict[str, float]]:
    """LaTRO [paper Eq. 3-4 + code], one policy pass over x ⊕ z ⊕ y (``mask`` = z, ``answer_mask`` = y)::

        lp(z_k|x), lp(y|x⊕z_k): sequence sums of token log-probs (with gradient)
        r_k  = sg(lp(y|x⊕z_k) − β·(lp(z_k|x) − lp_0(z_k|x)))      lp_0: adapter-disabled reference
        A_k  = r_k − mean_{j≠k} r_j                                 (RLOO over the K = G samples of a prompt)
        loss = mean_k[−A_k·lp(z_k|x)] − mean_k[lp(y|x⊕z_k)]        (mean over all rows of the batch)

    β = 0.05 [paper]. The mean's denominator is the whole batch's row count (``batch.lengths``
    rows); every prompt's K rows must be in this micro-batch."""
    _check_shapes(policy_logits, tokens, mask)
    mask, answer_mask = mask.bool(), answer_mask.bool()
    if bool((mask & answer_mask).any()):
        raise ValueError("latro: mask (rationale z) and answer_mask (answer y) overlap")
    _check_whole_groups(group_ids, batch, "latro")
    info = _batch_info(batch, mask, None, group_ids)
    n_rows = float(info.lengths.numel())
    logp = token_logprobs(policy_logits, tokens, mask | answer_mask)
    lp_z = (logp * mask).sum(1)
    lp_y = (logp * answer_mask).sum(1)
    kl_seq = torch.zeros_like(lp_z)
    if beta != 0.0:
        ref = _require(reference_logprobs, "the reference pass when beta != 0", "latro")
        kl_seq = lp_z.detach() - (ref.to(logp.dtype) * mask).sum(1)
    reward = (lp_y.detach() - beta * kl_seq).detach()
    adv = rloo_advantages(reward, group_ids)
    loss = (-(adv * lp_z) - lp_y).sum() / max(n_rows, 1.0)
    stats = {
        "answer_logprob": float(lp_y.detach().mean()),
        "rationale_logprob": float(lp_z.detach().mean()),
        "rationale_kl": float(kl_seq.mean()),
        "reward_mean": float(reward.mean()),
        "adv_abs_mean": float(adv.abs().mean()),
        "n_tokens": float(mask.sum()),
        "n_sequences": float(tokens.shape[0]),
    }
    return loss, stats


@register("latro")
class LaTRO:
    needs = Needs(
        policy_grad=True, reference=True, answer_suffix=True, groups=True, whole_groups=True, batch_totals=True
    )
    stat_keys = LATRO_STAT_KEYS

    def needs_for(self, *, beta: float = 0.05, **_) -> Needs:
        return Needs(
            policy_grad=True, reference=beta != 0.0, answer_suffix=True, groups=True, whole_groups=True,
            batch_totals=True,
        )

    def compute(
        self,
        inputs: ObjectiveInputs,
        *,
        beta: float = 0.05,
        answer_markers: tuple[str, ...] = LATRO_ANSWER_MARKERS,  # read by the loop (cut_before_marker)
        answer_template: str = "The answer is \\boxed{{{answer}}}.",  # read by the loop: y's text [infer]
        generator=None,
    ) -> tuple[Tensor, dict[str, float]]:
        answer_mask = _require(inputs.answer_mask, "answer_mask (Needs.answer_suffix)", self.name)
        group_ids = _require(inputs.group_ids, "group_ids (Needs.groups)", self.name)
        return latro_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, answer_mask, group_ids,
            reference_logprobs=_reference_logprobs(inputs, inputs.mask), batch=inputs.batch, beta=beta,
        )


def cut_before_marker(pieces: list[str], markers: tuple[str, ...] = LATRO_ANSWER_MARKERS) -> int:
    """How many leading tokens of a rationale to keep so that it stops before the first answer
    marker (LaTRO appends y there). ``pieces`` are the decoded text of each token id; a token that
    contains the marker's first character is dropped with everything after it. No marker: keep all."""
    text = "".join(pieces)
    starts = [i for i in (text.find(m) for m in markers) if i >= 0]
    if not starts:
        return len(pieces)
    cut, end = min(starts), 0
    for n, piece in enumerate(pieces):
        end += len(piece)
        if end > cut:
            return n
    return len(pieces)


# ------------------------------------------------------------------------------------------------
# IAPO


IAPO_STAT_KEYS = (
    "surprise_mean", "surprise_std", "confidence_mean", "token_adv_std", "zero_var_frac", "clip_frac",
    "ratio_mean", "kl", "entropy", "n_tokens", "n_sequences",
)
IAPO_PROBE_MARKER = "\nThe final answer is \\boxed{"  # [infer] the authors use "</think><answer>" (chat format)


@torch.no_grad()
def iapo_surprise(entropy: Tensor, mask: Tensor) -> Tensor:
    """s_t = ½(H_t + H_{t−1}) − H_{t+1}, with H zero outside the rationale (zero-padded ends)."""
    h = entropy.detach().masked_fill(~mask.bool(), 0.0)
    prev = F.pad(h[:, :-1], (1, 0))
    nxt = F.pad(h[:, 1:], (0, 1))
    return (0.5 * (h + prev) - nxt).masked_fill(~mask.bool(), 0.0)


@torch.no_grad()
def normalise_per_sequence(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean)/(std + eps) over each row's mask tokens (Bessel std, 0 for one token), then
    divided by the row's L2 norm + eps. This is the INTENDED form of the IAPO code's
    ``x - x.mean(1) / (x.std(1) + 1e-8)``, which by operator precedence subtracts mean/std
    instead of standardising; we also take statistics over mask tokens, not padding."""
    mask = mask.bool()
    m = mask.to(x.dtype)
    n = m.sum(1, keepdim=True)
    mean = (x * m).sum(1, keepdim=True) / n.clamp(min=1)
    var = (((x - mean) * m) ** 2).sum(1, keepdim=True) / (n - 1).clamp(min=1)
    z = ((x - mean) / (var.sqrt() + eps)) * m
    return z / (z.norm(dim=1, keepdim=True) + eps)


@torch.no_grad()
def iapo_token_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    next_entropy: Tensor,
    mask: Tensor,
    *,
    probe_entropy: Tensor | None = None,
    lambda_s: float = 1e-2,
    lambda_c: float = 1e-2,
    std_eps: float = 1e-4,
    batch: BatchInfo | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A_it = (r_i − mean_g r)/(std_g r + 1e-4) + λ_s ŝ_it − sign(r_i) λ_c ĉ_it, all detached.

    H = ``probe_entropy`` (``last_token``) or ``next_entropy`` (``next_token``); s from
    ``iapo_surprise(H)``; c = ``next_entropy``; ŝ, ĉ = ``normalise_per_sequence``. sign(r) is that of
    the raw reward as in the authors' code: with 1/0 rewards a wrong rationale (r = 0) gets no
    confidence term. Returns (A [B, T], ŝ, ĉ, s)."""
    mask = mask.bool()
    h = next_entropy if probe_entropy is None else probe_entropy.detach().to(next_entropy.dtype)
    s = iapo_surprise(h, mask)
    s_hat = normalise_per_sequence(s, mask)
    c_hat = normalise_per_sequence(next_entropy.masked_fill(~mask, 0.0), mask)
    adv, _ = grpo_advantages(rewards, group_ids, scale_rewards=True, std_eps=std_eps, batch=batch)
    sign = torch.sign(rewards.detach()).to(s.dtype).unsqueeze(1)
    a = adv.to(s.dtype).unsqueeze(1) + lambda_s * s_hat - sign * lambda_c * c_hat
    return a.masked_fill(~mask, 0.0), s_hat, c_hat, s


def iapo_loss(
    policy_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    *,
    mode: str = "next_token",
    probe_entropy: Tensor | None = None,
    sampled_logprobs: Tensor | None = None,
    reference_logprobs: Tensor | None = None,
    batch: BatchInfo | None = None,
    lambda_s: float = 1e-2,
    lambda_c: float = 1e-2,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    beta: float = 0.0,
    std_eps: float = 1e-4,
) -> tuple[Tensor, dict[str, float]]:
    """IAPO [code, G2RPO]: −clipped surrogate (ε_low 0.2, ε_high 0.28) with the token advantages of
    ``iapo_token_advantages``, `bnpo` aggregation (N = Σ ``batch.lengths``). ``mode`` ``next_token``
    (default) takes H from the policy's own next-token entropy; ``last_token`` needs
    ``probe_entropy``. λ_s = λ_c = 1e-2 [infer]; β = 0 [infer], > 0 adds the k3 KL."""
    _check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    mask = mask.bool()
    if mode not in ("next_token", "last_token"):
        raise ValueError(f"iapo mode must be 'next_token' or 'last_token', got {mode!r}")
    if mode == "last_token" and probe_entropy is None:
        raise ValueError("iapo mode 'last_token' needs probe_entropy (Needs.answer_entropy_probe)")
    info = _batch_info(batch, mask, rewards, group_ids)
    logp, next_entropy = token_logprobs(policy_logits, tokens, mask, with_entropy=True)
    adv, s_hat, c_hat, s = iapo_token_advantages(
        rewards, group_ids, next_entropy, mask, probe_entropy=probe_entropy if mode == "last_token" else None,
        lambda_s=lambda_s, lambda_c=lambda_c, std_eps=std_eps, batch=batch,
    )
    _, flat = grpo_advantages(rewards, group_ids, batch=batch)
    loss, core = _surrogate_loss(
        logp, next_entropy, mask, adv, sampled_logprobs=sampled_logprobs, reference_logprobs=reference_logprobs,
        beta=beta, eps_low=epsilon_low, eps_high=epsilon_high, aggregation="bnpo",
        n_sequences=float(info.lengths.numel()), n_tokens=float(info.lengths.sum()),
    )
    s_tok = s[mask]
    stats = {
        "surprise_mean": float(s_tok.mean()) if s_tok.numel() else 0.0,
        "surprise_std": float(s_tok.std()) if s_tok.numel() > 1 else 0.0,
        "confidence_mean": _masked_mean(next_entropy, mask),
        "token_adv_std": float(adv[mask].std()) if int(mask.sum()) > 1 else 0.0,
        "zero_var_frac": float(flat.float().mean()),
        **core,
        "n_sequences": float(tokens.shape[0]),
    }
    return loss, stats


@register("iapo")
class IAPO:
    needs = Needs(policy_grad=True, groups=True, batch_totals=True)
    stat_keys = IAPO_STAT_KEYS

    def needs_for(self, *, mode: str = "next_token", beta: float = 0.0, **_) -> Needs:
        return Needs(
            policy_grad=True, reference=beta != 0.0, groups=True, batch_totals=True,
            answer_entropy_probe=mode == "last_token",
        )

    def compute(
        self,
        inputs: ObjectiveInputs,
        *,
        mode: str = "next_token",
        lambda_s: float = 1e-2,
        lambda_c: float = 1e-2,
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.28,
        beta: float = 0.0,
        std_eps: float = 1e-4,
        probe_marker: str = IAPO_PROBE_MARKER,  # read by the loop for the last_token probe
        generator=None,
    ) -> tuple[Tensor, dict[str, float]]:
        rewards, group_ids = _group_inputs(inputs, self.name)
        return iapo_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, rewards, group_ids, mode=mode,
            probe_entropy=inputs.probe_entropy, sampled_logprobs=inputs.sampled_logprobs,
            reference_logprobs=_reference_logprobs(inputs, inputs.mask), batch=inputs.batch,
            lambda_s=lambda_s, lambda_c=lambda_c, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
            beta=beta, std_eps=std_eps,
        )


# ------------------------------------------------------------------------------------------------
# RePro


REPRO_STAT_KEYS = (
    "score_mean", "magnitude_mean", "stability_mean", "kendall_tau_final", "gold_logprob_gain",
    "process_reward_abs_mean", "process_adv_abs_mean", "zero_var_frac", "clip_frac", "ratio_mean", "kl",
    "entropy", "n_points", "n_tokens", "n_sequences",
)
REPRO_BOUNDARY_MARKERS = (".\n", "?\n", "\n\n")


@torch.no_grad()
def kendall_tau_prefix(values: Tensor, valid: Tensor) -> Tensor:
    """τ_b between point index and ``values`` over points 0..j, for every j: ``[B, P]``.

    Valid points must be a prefix of each row; invalid points get 0. τ over a single point (no
    pairs) and τ with all values tied are 0 [infer]. The index has no ties, so
    τ_b = (C − D)/sqrt(n0·(n0 − n_ties))."""
    v = values.detach()
    ok = valid.bool()
    P = v.shape[1]
    before = torch.ones(P, P, dtype=torch.bool, device=v.device).triu(1)  # [a, c]: a < c
    pair = before & ok.unsqueeze(2) & ok.unsqueeze(1)  # [B, a, c]
    diff = torch.sign(v.unsqueeze(1) - v.unsqueeze(2)) * pair  # sign(v_c − v_a)
    cd = diff.sum(1).cumsum(1)  # C − D over pairs ending at ≤ j
    n0 = pair.sum(1).cumsum(1).to(v.dtype)
    ties = ((diff == 0) & pair).sum(1).cumsum(1).to(v.dtype)
    denom = (n0 * (n0 - ties)).sqrt()
    tau = torch.where(denom > 0, cd / denom.clamp(min=1e-30), torch.zeros_like(cd))
    return tau.masked_fill(~ok, 0.0)


@torch.no_grad()
def repro_point_scores(
    prefix_scores: Tensor, valid: Tensor, *, w: float = 0.5, min_abs_base: float = 1e-8
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per scored point j (point 0 is J_b, the empty rationale)::

        Δ_j      = (J̃_j − J_b)/|J_b|            S_magn = tanh(Δ_j − 1) + 1
        τ_j      = Kendall τ(index, J̃) over 0..j  S_stab = (τ_j + 1)/2
        S_j      = (1 − w)·S_magn + w·S_stab

    |J_b| is floored at ``min_abs_base`` [infer: J_b = 0 only if the answer is certain a priori].
    Returns (S, S_magn, S_stab, τ), each ``[B, P]``, 0 on invalid points."""
    ok = valid.bool()
    j = prefix_scores.detach()
    base = j[:, :1]
    delta = (j - base) / base.abs().clamp(min=min_abs_base)
    s_magn = torch.tanh(delta - 1.0) + 1.0
    tau = kendall_tau_prefix(j, ok)
    s_stab = (tau + 1.0) / 2.0
    s = (1.0 - w) * s_magn + w * s_stab
    zero = lambda x: x.masked_fill(~ok, 0.0)  # noqa: E731
    return zero(s), zero(s_magn), zero(s_stab), zero(tau)


@torch.no_grad()
def repro_process_rewards(
    prefix_positions: Tensor, point_scores: Tensor, valid: Tensor, seq_len: int
) -> tuple[Tensor, Tensor]:
    """r̃_j = S_j − S_{j−1} for j ≥ 1, placed on the token before boundary j (index p_j − 1; the
    end point p = |z| lands on the last token). Returns (dense r̃ [B, T], which tokens hold one)."""
    ok = valid.bool()
    B, P = prefix_positions.shape
    diffs = point_scores[:, 1:] - point_scores[:, :-1]
    has = ok[:, 1:]
    where = (prefix_positions[:, 1:] - 1).clamp(min=0)
    dense = torch.zeros(B, seq_len, dtype=point_scores.dtype, device=point_scores.device)
    holds = torch.zeros(B, seq_len, dtype=torch.bool, device=point_scores.device)
    rows = torch.arange(B, device=point_scores.device).unsqueeze(1).expand(B, P - 1)
    dense.index_put_((rows[has], where[has]), diffs[has], accumulate=True)
    holds[rows[has], where[has]] = True
    return dense, holds


@torch.no_grad()
def normalise_within_groups(values: Tensor, holds: Tensor, group_ids: Tensor, eps: float = 1e-4) -> Tensor:
    """(r̃ − mean)/(std + eps) with mean and Bessel std pooled over every process reward of the
    prompt group (all its rows' scored points) [infer: pooled, same std convention as GRPO]."""
    _, uslot, _ = _group_slots(group_ids[:1], group_ids)
    n = int(uslot.max()) + 1
    h = holds.to(values.dtype)
    cnt = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, uslot, h.sum(1))
    tot = torch.zeros_like(cnt).index_add_(0, uslot, (values * h).sum(1))
    mean = (tot / cnt.clamp(min=1))[uslot].unsqueeze(1)
    sq = torch.zeros_like(cnt).index_add_(0, uslot, (((values - mean) * h) ** 2).sum(1))
    std = torch.where(cnt > 1, (sq / (cnt - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))[uslot].unsqueeze(1)
    return ((values - mean) / (std + eps)) * h


def reverse_cumsum(x: Tensor, mask: Tensor) -> Tensor:
    """Ã_t = Σ_{t' ≥ t} x_{t'} over each row's mask tokens, 0 off the mask."""
    m = mask.bool()
    x = x.masked_fill(~m, 0.0)
    return x.flip(1).cumsum(1).flip(1).masked_fill(~m, 0.0)


def repro_loss(
    policy_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    prefix_positions: Tensor,
    prefix_scores: Tensor,
    *,
    sampled_logprobs: Tensor | None = None,
    reference_logprobs: Tensor | None = None,
    batch: BatchInfo | None = None,
    w: float = 0.5,
    alpha: float = 0.1,
    epsilon: float = 0.2,
    beta: float = 0.0,
    std_eps: float = 1e-4,
) -> tuple[Tensor, dict[str, float]]:
    """RePro [paper summary + code; weakest source]::

        S_j  from ``repro_point_scores`` (w = 0.5), r̃_j = S_j − S_{j−1} on token p_j − 1
        r̃   normalised within the prompt group (``normalise_within_groups``)
        Ã_t  = Σ_{t' ≥ t} r̃_{t'};   A_it = Â_i(GRPO) + α·Ã_it (α = 0.1)
        loss = −clipped surrogate (ε = 0.2), token mean over the batch (N = Σ ``batch.lengths``)

    ``prefix_positions`` ``[B, P]``: ascending prefix lengths p (first 0, last |z|; pad −1),
    ``prefix_scores``: J̃_p. Process rewards go to every rollout, correct or not [infer]. β = 0
    [infer], > 0 adds the k3 KL. Every prompt's G rows must be in this micro-batch."""
    _check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    mask = mask.bool()
    if prefix_positions.shape != prefix_scores.shape or prefix_positions.shape[0] != tokens.shape[0]:
        raise ValueError("prefix_positions and prefix_scores must both be [B, P]")
    _check_whole_groups(group_ids, batch, "repro")
    valid = prefix_positions >= 0
    lengths = mask.sum(1)
    pos = prefix_positions.masked_fill(~valid, 0)
    n_valid = valid.sum(1)
    if bool((n_valid < 1).any()) or bool((prefix_positions[:, 0] != 0).any()):
        raise ValueError("repro: every row's first scored point must be position 0 (J_b)")
    if bool((valid[:, 1:] & ~valid[:, :-1]).any()):
        raise ValueError("repro: padding (-1) must come after the valid points")
    if bool(((pos[:, 1:] <= pos[:, :-1]) & valid[:, 1:]).any()):
        raise ValueError("repro: prefix positions must be strictly increasing")
    if bool((pos.max(1).values > lengths).any()):
        raise ValueError("repro: a prefix position is past the end of its rationale")

    info = _batch_info(batch, mask, rewards, group_ids)
    s, s_magn, s_stab, tau = repro_point_scores(prefix_scores, valid, w=w)
    raw, holds = repro_process_rewards(pos, s, valid, tokens.shape[1])
    normed = normalise_within_groups(raw.to(s.dtype), holds & mask, group_ids, eps=std_eps)
    process_adv = reverse_cumsum(normed, mask)
    outcome_adv, flat = grpo_advantages(rewards, group_ids, batch=batch)
    adv = outcome_adv.to(process_adv.dtype).unsqueeze(1) + alpha * process_adv
    logp, entropy = token_logprobs(policy_logits, tokens, mask, with_entropy=True)
    loss, core = _surrogate_loss(
        logp, entropy, mask, adv, sampled_logprobs=sampled_logprobs, reference_logprobs=reference_logprobs,
        beta=beta, eps_low=epsilon, eps_high=epsilon, aggregation="bnpo",
        n_sequences=float(info.lengths.numel()), n_tokens=float(info.lengths.sum()),
    )
    last = (n_valid - 1).clamp(min=0).unsqueeze(1)
    j = prefix_scores.detach()
    stats = {
        "score_mean": float(s[valid].mean()),
        "magnitude_mean": float(s_magn[valid].mean()),
        "stability_mean": float(s_stab[valid].mean()),
        "kendall_tau_final": float(tau.gather(1, last).mean()),
        "gold_logprob_gain": float((j.gather(1, last) - j[:, :1]).mean()),
        "process_reward_abs_mean": float(raw[holds].abs().mean()) if bool(holds.any()) else 0.0,
        "process_adv_abs_mean": _masked_mean(process_adv.abs(), mask),
        "zero_var_frac": float(flat.float().mean()),
        **core,
        "n_points": float(valid.sum()),
        "n_sequences": float(tokens.shape[0]),
    }
    return loss, stats


@register("repro")
class RePro:
    needs = Needs(policy_grad=True, groups=True, whole_groups=True, prefix_scores=True, batch_totals=True)
    stat_keys = REPRO_STAT_KEYS

    def needs_for(self, *, beta: float = 0.0, **_) -> Needs:
        return Needs(
            policy_grad=True, reference=beta != 0.0, groups=True, whole_groups=True, prefix_scores=True,
            batch_totals=True,
        )

    def compute(
        self,
        inputs: ObjectiveInputs,
        *,
        w: float = 0.5,
        alpha: float = 0.1,
        epsilon: float = 0.2,
        beta: float = 0.0,
        std_eps: float = 1e-4,
        top_k: int = 10,  # read by the loop (select_prefix_points)
        boundary_markers: tuple[str, ...] = REPRO_BOUNDARY_MARKERS,  # read by the loop (segment_boundaries)
        answer_template: str = "\\boxed{{{answer}}}",  # read by the loop: the gold answer's text
        generator=None,
    ) -> tuple[Tensor, dict[str, float]]:
        rewards, group_ids = _group_inputs(inputs, self.name)
        positions = _require(inputs.prefix_positions, "prefix_positions (Needs.prefix_scores)", self.name)
        scores = _require(inputs.prefix_scores, "prefix_scores (Needs.prefix_scores)", self.name)
        return repro_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, rewards, group_ids, positions, scores,
            sampled_logprobs=inputs.sampled_logprobs, reference_logprobs=_reference_logprobs(inputs, inputs.mask),
            batch=inputs.batch, w=w, alpha=alpha, epsilon=epsilon, beta=beta, std_eps=std_eps,
        )


def segment_boundaries(pieces: list[str], markers: tuple[str, ...] = REPRO_BOUNDARY_MARKERS) -> list[bool]:
    """Per token: does the text before it end with a segment marker (".\\n", "?\\n", "\\n\\n")?
    ``pieces`` are the decoded text of each rationale token id. Token 0 is never a boundary."""
    out, text = [], ""
    for piece in pieces:
        out.append(bool(text) and text.endswith(markers))
        text += piece
    return out


@torch.no_grad()
def select_prefix_points(entropy: Tensor, boundary: Tensor, length: int, k: int = 10) -> Tensor:
    """RePro's scored prefix lengths for one rationale: 0, the k boundaries (1 ≤ p < length) with the
    highest policy entropy at the boundary token p (the distribution that predicts z_p, the first
    token of the new segment), and ``length``; ascending, unique. ``entropy``, ``boundary``: ``[T]``."""
    idx = torch.arange(entropy.shape[0], device=entropy.device)
    cand = boundary.bool() & (idx >= 1) & (idx < length)
    picked = idx[cand]
    if picked.numel() > k:
        picked = picked[entropy[cand].topk(k).indices]
    ends = torch.tensor([0, length], dtype=torch.long, device=idx.device)
    points = torch.cat([ends[:1], picked, ends[1:]])
    return torch.unique(points, sorted=True)
