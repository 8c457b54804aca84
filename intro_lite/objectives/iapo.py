"""IAPO [code, YinhanHe123/IAPO, ``G2RPOTrainer``]: token-wise advantages from answer-uncertainty
reduction. Mode ``last_token`` reads an answer probe it runs itself (``extra_passes``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from intro_lite.bounds import bounded
from intro_lite.objectives.base import BatchInfo, Needs, Objective, ObjectiveInputs, PassContext, Row, register
from intro_lite.objectives.common import (STD_EPS, batch_info, check_shapes, group_inputs, grpo_advantages,
                                          masked_mean, surrogate_args, surrogate_loss, token_logprobs)


@dataclass(frozen=True)
class IapoConfig:
    mode: Literal["next_token", "last_token"] = "next_token"
    lambda_s: float = bounded(1e-2, ge=0)  # [infer]
    lambda_c: float = bounded(1e-2, ge=0)  # [infer]
    epsilon_low: float = bounded(0.2, gt=0, lt=1)
    epsilon_high: float = bounded(0.28, gt=0)
    beta: float = bounded(0.0, ge=0)  # [infer]; > 0 adds the k3 KL
    std_eps: float = bounded(STD_EPS, gt=0)
    # The probe's answer marker (last_token) [infer]: the authors use "</think><answer>" (chat format).
    probe_marker: str = "\nThe final answer is \\boxed{"


IAPO_STAT_KEYS = (
    "surprise_mean", "surprise_std", "confidence_mean", "token_adv_std", "zero_var_frac", "clip_frac",
    "ratio_mean", "kl", "entropy", "n_tokens", "n_sequences",
)


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
    lambda_s: float = IapoConfig.lambda_s,
    lambda_c: float = IapoConfig.lambda_c,
    std_eps: float = IapoConfig.std_eps,
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
    mode: str = IapoConfig.mode,
    probe_entropy: Tensor | None = None,
    sampled_logprobs: Tensor | None = None,
    reference_logprobs: Tensor | None = None,
    batch: BatchInfo | None = None,
    lambda_s: float = IapoConfig.lambda_s,
    lambda_c: float = IapoConfig.lambda_c,
    epsilon_low: float = IapoConfig.epsilon_low,
    epsilon_high: float = IapoConfig.epsilon_high,
    beta: float = IapoConfig.beta,
    std_eps: float = IapoConfig.std_eps,
) -> tuple[Tensor, dict[str, float]]:
    """IAPO [code, G2RPO]: −clipped surrogate (ε_low 0.2, ε_high 0.28) with the token advantages of
    ``iapo_token_advantages``, `bnpo` aggregation (N = Σ ``batch.lengths``). ``mode`` ``next_token``
    (default) takes H from the policy's own next-token entropy; ``last_token`` needs
    ``probe_entropy``. λ_s = λ_c = 1e-2 [infer]; β = 0 [infer], > 0 adds the k3 KL."""
    check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    mask = mask.bool()
    if mode not in ("next_token", "last_token"):
        raise ValueError(f"iapo mode must be 'next_token' or 'last_token', got {mode!r}")
    if mode == "last_token" and probe_entropy is None:
        raise ValueError("iapo mode 'last_token' needs probe_entropy (IAPO's extra_passes)")
    info = batch_info(batch, mask, rewards, group_ids)
    logp, next_entropy = token_logprobs(policy_logits, tokens, mask, with_entropy=True)
    adv, s_hat, c_hat, s = iapo_token_advantages(
        rewards, group_ids, next_entropy, mask, probe_entropy=probe_entropy if mode == "last_token" else None,
        lambda_s=lambda_s, lambda_c=lambda_c, std_eps=std_eps, batch=batch,
    )
    _, flat = grpo_advantages(rewards, group_ids, batch=batch)
    loss, core = surrogate_loss(
        logp, next_entropy, mask, adv, sampled_logprobs=sampled_logprobs, reference_logprobs=reference_logprobs,
        beta=beta, eps_low=epsilon_low, eps_high=epsilon_high, aggregation="bnpo",
        n_sequences=float(info.lengths.numel()), n_tokens=float(info.lengths.sum()),
    )
    s_tok = s[mask]
    stats = {
        "surprise_mean": float(s_tok.mean()) if s_tok.numel() else 0.0,
        "surprise_std": float(s_tok.std()) if s_tok.numel() > 1 else 0.0,
        "confidence_mean": masked_mean(next_entropy, mask),
        "token_adv_std": float(adv[mask].std()) if int(mask.sum()) > 1 else 0.0,
        "zero_var_frac": float(flat.float().mean()),
        **core,
        "n_sequences": float(tokens.shape[0]),
    }
    return loss, stats


@register("iapo")
class IAPO(Objective):
    needs = Needs(batch_totals=True)
    stat_keys = IAPO_STAT_KEYS
    config = IapoConfig

    def needs_for(self, cfg: IapoConfig) -> Needs:
        return dataclasses.replace(self.needs, reference=cfg.beta != 0.0)  # the k3 KL's adapter-disabled pass

    def extra_passes(self, inputs: ObjectiveInputs, chunk: list[Row], ctx: PassContext, cfg: IapoConfig) -> dict[str, Tensor]:
        """``last_token``: ``probe_entropy`` [B, T], H_t = entropy of the next-token distribution at the first
        answer position after x ⊕ z<t ⊕ the answer marker, for each rationale position t."""
        if cfg.mode != "last_token":
            return {}
        return {"probe_entropy": answer_probe_entropy(chunk, ctx, cfg.probe_marker, inputs.tokens.shape).to(inputs.tokens.device)}

    def compute(self, inputs: ObjectiveInputs, cfg: IapoConfig | None = None, *, generator=None) -> tuple[Tensor, dict[str, float]]:
        c = cfg or self.default_config()
        rewards, group_ids = group_inputs(inputs, self.name)
        return iapo_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, rewards, group_ids, mode=c.mode,
            probe_entropy=inputs.extra.get("probe_entropy"), **surrogate_args(inputs),
            lambda_s=c.lambda_s, lambda_c=c.lambda_c, epsilon_low=c.epsilon_low, epsilon_high=c.epsilon_high,
            beta=c.beta, std_eps=c.std_eps,
        )


@torch.no_grad()
def answer_probe_entropy(chunk: list[Row], ctx: PassContext, marker: str, shape) -> Tensor:
    """IAPO last_token: entropy of the next-token distribution after x ⊕ z<t ⊕ marker (the first
    answer position), for every t."""
    marker_ids = ctx.tokenizer(marker, add_special_tokens=False)["input_ids"]
    # suffix_logits scores the tokens of a suffix: one placeholder after the marker makes it compute the
    # distribution that follows the whole marker (its own id is never read: position t sees only < t).
    probe = marker_ids + [marker_ids[-1]]
    out = torch.zeros(shape)
    for b, r in enumerate(chunk):
        heads = [r.x + r.suffix[:t] for t in range(r.n_loss)]
        for start in range(0, len(heads), 32):
            part = heads[start : start + 32]
            logits, _, _ = ctx.logits(part, [probe] * len(part))
            last = torch.log_softmax(logits[:, len(marker_ids)], -1)
            out[b, start : start + len(part)] = -(last.exp() * last).sum(-1).cpu()
    return out
