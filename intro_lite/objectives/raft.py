"""RAFT++ and Reinforce-Rej [code, RLHFlow/Minimal-RL]: clipped surrogate on correct samples only /
on ±1 rewards with flat groups dropped."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from intro_lite.bounds import bounded
from intro_lite.rewards import CORRECT_ABOVE
from intro_lite.objectives.base import BatchInfo, Needs, Objective, ObjectiveInputs, register
from intro_lite.objectives.common import (batch_info, check_shapes, float_dtype, group_inputs, group_reward_stats,
                                          require, surrogate_args, surrogate_loss, token_logprobs, universe_of,
                                          zero_loss)


@dataclass(frozen=True)
class RaftPPConfig:
    epsilon: float = bounded(0.2, gt=0, lt=1)
    beta: float = bounded(0.0, ge=0)  # > 0 adds the k3 KL (and the reference pass)


@dataclass(frozen=True)
class ReinforceRejConfig:
    epsilon: float = bounded(0.2, gt=0, lt=1)
    beta: float = bounded(0.0, ge=0)


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
    epsilon: float = RaftPPConfig.epsilon,
    beta: float = RaftPPConfig.beta,
) -> tuple[Tensor, dict[str, float]]:
    """RAFT++ [code, Minimal-RL]: A_i = 1 on correct samples (r > 0.5: a reward function's value is
    binarised; with math's 1/0 this is max(r_i, 0)); −clipped surrogate (ε = 0.2), token mean over
    the tokens of the correct samples only — the others carry no gradient and do not count in the
    normaliser (N = Σ ``batch.lengths`` over rows with reward > 0.5). β > 0 adds the k3 KL (off by
    default, no reference pass)."""
    check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    info = batch_info(batch, mask, rewards, None)
    info_rewards = require(info.rewards, "batch.rewards", "raft++")
    n_total = float(info.lengths[info_rewards.to(info.lengths.device) > CORRECT_ABOVE].sum())
    correct = rewards.detach() > CORRECT_ABOVE
    train_mask = mask.bool() & correct.unsqueeze(1).to(mask.device)
    stats_extra = {"kept_frac": float(correct.float().mean()), "n_sequences": float(correct.sum())}
    if n_total == 0 or not bool(train_mask.any()):
        zero = dict.fromkeys(RAFT_STAT_KEYS, 0.0)
        return zero_loss(policy_logits), {**zero, "kept_frac": stats_extra["kept_frac"]}
    adv = correct.to(float_dtype(rewards))
    logp, entropy = token_logprobs(policy_logits, tokens, train_mask, with_entropy=True)
    loss, core = surrogate_loss(
        logp, entropy, train_mask, adv, sampled_logprobs=sampled_logprobs,
        reference_logprobs=reference_logprobs, beta=beta, eps_low=epsilon, eps_high=epsilon,
        aggregation="bnpo", n_sequences=0, n_tokens=n_total,
    )
    return loss, {"kept_frac": stats_extra["kept_frac"], **core, "n_sequences": stats_extra["n_sequences"]}


@register("raft++", section="raft_pp")
class RAFTpp(Objective):
    needs = Needs(kept_only=True, batch_totals=True)
    stat_keys = RAFT_STAT_KEYS
    config = RaftPPConfig

    def needs_for(self, cfg) -> Needs:
        return dataclasses.replace(self.needs, reference=cfg.beta != 0.0)  # the k3 KL's adapter-disabled pass

    def compute(self, inputs: ObjectiveInputs, cfg: RaftPPConfig | None = None, *, generator=None) -> tuple[Tensor, dict[str, float]]:
        c = cfg or self.default_config()
        rewards = require(inputs.rewards, "rewards", self.name)
        return raft_pp_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, rewards,
            **surrogate_args(inputs),
            epsilon=c.epsilon, beta=c.beta,
        )


REJ_STAT_KEYS = ("dropped_frac", "clip_frac", "ratio_mean", "kl", "entropy", "n_tokens", "n_sequences")


def binarised(rewards: Tensor, batch: BatchInfo | None) -> tuple[Tensor, BatchInfo | None]:
    """1/0 rewards (r > 0.5) for the row and the batch: a reward function's values become correct/wrong."""
    to01 = lambda r: (r > CORRECT_ABOVE).to(float_dtype(r))  # noqa: E731
    if batch is not None and batch.rewards is not None:
        batch = dataclasses.replace(batch, rewards=to01(batch.rewards))
    return to01(rewards), batch


@torch.no_grad()
def reinforce_rej_advantages(
    rewards: Tensor, group_ids: Tensor, batch: BatchInfo | None = None
) -> tuple[Tensor, Tensor]:
    """Reinforce-Rej [code, Minimal-RL]: r' = +1 if correct (r > 0.5) else −1, A_i = r'_i; rows of
    groups whose binarised rewards are all equal are dropped. Returns (A [B], kept [B])."""
    rewards, batch = binarised(rewards, batch)
    _, _, _, flat = group_reward_stats(rewards, group_ids, batch)
    signed = torch.where(rewards.detach() > 0, 1.0, -1.0).to(float_dtype(rewards))
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
    epsilon: float = ReinforceRejConfig.epsilon,
    beta: float = ReinforceRejConfig.beta,
) -> tuple[Tensor, dict[str, float]]:
    """Reinforce-Rej: A = ±1 from ``reinforce_rej_advantages``; −clipped surrogate (ε = 0.2) token
    mean over the kept groups' tokens (N = Σ ``batch.lengths`` over rows of non-flat groups)
    [infer: same surrogate and aggregation as RAFT++]."""
    check_shapes(policy_logits, tokens, mask)
    rewards, batch = binarised(rewards.detach(), batch)  # a fixed input: advantages never carry gradient
    info = batch_info(batch, mask, rewards, group_ids)
    all_r, all_g = universe_of(rewards, group_ids, batch)
    _, _, _, flat_all = group_reward_stats(all_r, all_g, batch)
    n_total = float(info.lengths[~flat_all.to(info.lengths.device)].sum())
    adv, kept = reinforce_rej_advantages(rewards, group_ids, batch)
    train_mask = mask.bool() & kept.unsqueeze(1).to(mask.device)
    dropped_frac = float((~kept).float().mean())
    if n_total == 0 or not bool(train_mask.any()):
        return zero_loss(policy_logits), {**dict.fromkeys(REJ_STAT_KEYS, 0.0), "dropped_frac": dropped_frac}
    logp, entropy = token_logprobs(policy_logits, tokens, train_mask, with_entropy=True)
    loss, core = surrogate_loss(
        logp, entropy, train_mask, adv, sampled_logprobs=sampled_logprobs,
        reference_logprobs=reference_logprobs, beta=beta, eps_low=epsilon, eps_high=epsilon,
        aggregation="bnpo", n_sequences=0, n_tokens=n_total,
    )
    return loss, {"dropped_frac": dropped_frac, **core, "n_sequences": float(kept.sum())}


@register("reinforce_rej")
class ReinforceRej(Objective):
    needs = Needs(batch_totals=True)
    stat_keys = REJ_STAT_KEYS
    config = ReinforceRejConfig

    def needs_for(self, cfg) -> Needs:
        return dataclasses.replace(self.needs, reference=cfg.beta != 0.0)  # the k3 KL's adapter-disabled pass

    def compute(self, inputs: ObjectiveInputs, cfg: ReinforceRejConfig | None = None, *,
                generator=None) -> tuple[Tensor, dict[str, float]]:
        c = cfg or self.default_config()
        rewards, group_ids = group_inputs(inputs, self.name)
        return reinforce_rej_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, rewards, group_ids,
            **surrogate_args(inputs),
            epsilon=c.epsilon, beta=c.beta,
        )
