"""GPG [code, AMAP-ML/GPG]: −α/Σ|o| Σ Â·log π with α = B/(B − M). No config keys."""

from __future__ import annotations

import torch
from torch import Tensor

from intro_lite.objectives.base import BatchInfo, Needs, Objective, ObjectiveInputs, register
from intro_lite.objectives.common import (batch_info, check_shapes, group_inputs, group_reward_stats, group_slots,
                                          grpo_advantages, masked_mean, token_logprobs, universe_of)


GPG_STAT_KEYS = ("alpha", "zero_var_frac", "adv_abs_mean", "entropy", "n_tokens", "n_sequences")


@torch.no_grad()
def gpg_alpha(rewards: Tensor, group_ids: Tensor) -> float:
    """α = B/(B − M) over the whole batch, B the number of prompt groups and M the number of
    zero-variance groups (docs/objectives.md; with equal group sizes this equals the sequence-count form
    #rows/#rows-in-varying-groups). α = 1 when every group is flat (then every Â is 0 anyway)."""
    _, uslot, _ = group_slots(group_ids[:1], group_ids)
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
    No ratio, no clip, no KL. (The GPG paper's optional resampling until ≥ 60 % of groups are valid
    is not implemented: every step trains on the groups it sampled.)"""
    check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    mask = mask.bool()
    info = batch_info(batch, mask, rewards, group_ids)
    all_r, all_g = universe_of(rewards, group_ids, batch)
    alpha = gpg_alpha(all_r, all_g)
    adv, flat = grpo_advantages(rewards, group_ids, scale_rewards=False, batch=batch)
    n_total = float(info.lengths.sum())
    logp, entropy = token_logprobs(policy_logits, tokens, mask, with_entropy=True)
    loss = -(alpha / max(n_total, 1.0)) * (adv.to(logp.dtype).unsqueeze(1) * logp).sum()
    stats = {
        "alpha": alpha,
        "zero_var_frac": float(flat.float().mean()),
        "adv_abs_mean": float(adv.abs().float().mean()),
        "entropy": masked_mean(entropy, mask),
        "n_tokens": float(mask.sum()),
        "n_sequences": float(tokens.shape[0]),
    }
    return loss, stats


@register("gpg")
class GPG(Objective):
    needs = Needs(batch_totals=True)
    stat_keys = GPG_STAT_KEYS

    def compute(self, inputs: ObjectiveInputs, cfg: None = None, *, generator=None) -> tuple[Tensor, dict[str, float]]:
        rewards, group_ids = group_inputs(inputs, self.name)
        return gpg_loss(inputs.policy_logits, inputs.tokens, inputs.mask, rewards, group_ids, batch=inputs.batch)
