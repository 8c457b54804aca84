"""GRPO [paper, DeepSeekMath; aggregation names from TRL] and Dr. GRPO [code, sail-sg/understand-r1-zero]."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from intro_lite.bounds import bounded
from intro_lite.objectives.base import BatchInfo, Needs, Objective, ObjectiveInputs, register
from intro_lite.objectives.common import (STD_EPS, batch_info, check_shapes, group_inputs, grpo_advantages,
                                          surrogate_args, surrogate_loss, token_logprobs)


@dataclass(frozen=True)
class GrpoConfig:
    beta: float = bounded(0.04, ge=0)  # k3 KL weight against the adapter-disabled base; 0 = no reference pass
    epsilon: float = bounded(0.2, gt=0, lt=1)
    epsilon_high: float = bounded(0.0, ge=0)  # 0 = same as epsilon (DAPO's clip-higher when larger)
    loss_aggregation: Literal["grpo", "bnpo", "dr_grpo"] = "grpo"
    scale_rewards: bool = True
    std_eps: float = bounded(STD_EPS, gt=0)


@dataclass(frozen=True)
class DrGrpoConfig(GrpoConfig):
    """GRPO's keys with Dr. GRPO's defaults: no std scaling, `dr_grpo` aggregation, no KL."""

    beta: float = bounded(0.0, ge=0)
    loss_aggregation: Literal["grpo", "bnpo", "dr_grpo"] = "dr_grpo"
    scale_rewards: bool = False


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
    beta: float = GrpoConfig.beta,
    epsilon: float = GrpoConfig.epsilon,
    epsilon_high: float | None = GrpoConfig.epsilon_high,
    loss_aggregation: str = GrpoConfig.loss_aggregation,
    scale_rewards: bool = GrpoConfig.scale_rewards,
    std_eps: float = GrpoConfig.std_eps,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO [paper, DeepSeekMath], minimised::

        Â_i = (r_i − mean_g r)/(std_g r + std_eps)       (r_i − mean_g r if not scale_rewards)
        ρ   = π_θ/sg(π_old)  (π_old = sg(π_θ) without sampled_logprobs: ρ = 1, gradient kept)
        ℓ_it = −min(ρ Â_i, clip(ρ, 1−ε, 1+ε_high) Â_i) + β·(π_ref/π_θ − log(π_ref/π_θ) − 1)
        loss = aggregate(ℓ, loss_aggregation)            (grpo | bnpo | dr_grpo, see ``aggregate``)

    ε = 0.2, β = 0.04 [paper] (``GrpoConfig``); ε_high 0 or None means ε; ``std_eps`` see ``grpo_advantages`` [infer].
    Whole-batch normalisers: n_sequences = rows of ``batch``, n_tokens = Σ ``batch.lengths``.
    """
    check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    mask = mask.bool()
    info = batch_info(batch, mask, rewards, group_ids)
    adv, flat = grpo_advantages(rewards, group_ids, scale_rewards=scale_rewards, std_eps=std_eps, batch=batch)
    logp, entropy = token_logprobs(policy_logits, tokens, mask, with_entropy=True)
    loss, core = surrogate_loss(
        logp, entropy, mask, adv,
        sampled_logprobs=sampled_logprobs, reference_logprobs=reference_logprobs, beta=beta,
        eps_low=epsilon, eps_high=epsilon_high or epsilon,
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


@register("grpo")
class GRPO(Objective):
    needs = Needs(batch_totals=True)
    stat_keys = GRPO_STAT_KEYS
    config = GrpoConfig

    def needs_for(self, cfg) -> Needs:
        return dataclasses.replace(self.needs, reference=cfg.beta != 0.0)  # the k3 KL's adapter-disabled pass

    def compute(self, inputs: ObjectiveInputs, cfg: GrpoConfig | None = None, *, generator=None) -> tuple[Tensor, dict[str, float]]:
        c = cfg or self.default_config()
        rewards, group_ids = group_inputs(inputs, self.name)
        return grpo_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, rewards, group_ids,
            **surrogate_args(inputs),
            max_completion_length=inputs.max_completion_length, beta=c.beta, epsilon=c.epsilon,
            epsilon_high=c.epsilon_high, loss_aggregation=c.loss_aggregation, scale_rewards=c.scale_rewards,
            std_eps=c.std_eps,
        )


@register("dr_grpo")
class DrGRPO(GRPO):
    """Dr. GRPO: Â = r − mean (no std), `dr_grpo` aggregation, β = 0."""

    needs = Needs(batch_totals=True)
    config = DrGrpoConfig
