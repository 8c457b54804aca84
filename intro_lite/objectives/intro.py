"""InTRO loss (seed 001, Eq. 7) as a pure tensor function."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from intro_lite.objectives import Needs, ObjectiveInputs, register

STAT_KEYS = ("w_mean", "w_gt1_frac", "w_clipped_frac", "entropy", "w_own_mean", "n_tokens")


def intro_loss(
    policy_logits: Tensor,
    posterior_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    *,
    n_candidates: int | str = 5,
    clip_max: float = 200.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Negative InTRO objective over a batch of kept rationales.

    Shapes: logits ``[B, T, V]`` with position t predicting ``tokens[:, t]``;
    ``tokens``, ``mask`` ``[B, T]``, mask 1 on rationale tokens. Tokens under mask 0
    are never read (padding such as -100 is fine). p = softmax(policy_logits),
    q = softmax(posterior_logits); gradient flows only through ``policy_logits``.

    With an integer n (Eq. 7)::

        J_z  = 1/(|z|·n) · Σ_t Σ_{i=1..n} w_t^i · log p(v_t^i)
        w    = sg(clip(q(v) / p(v), 0, C))
        loss = −mean of J_z over rows with at least one mask token

    v_t^1 is the rationale's own token z_t; v_t^2..n are drawn i.i.d. with
    replacement from sg(p(·|t)) at temperature 1 (``torch.multinomial`` with
    ``generator``, which must live on the logits' device). In expectation over the
    draws, position t contributes
    ``((n−1)/n)·Σ_v p(v)·w(v)·log p(v) + (1/n)·w(z_t)·log p(z_t)``, gradient through log p.

    ``n_candidates="all"`` is the n → ∞ limit of that expectation: the own-token term
    vanishes as 1/n and position t contributes the zero-variance full-vocabulary sum
    ``Σ_v sg(min(q(v), C·p(v))) · log p(v)`` (= Σ_v sg(p·w)·log p), i.e. forward-KL
    distillation onto the clipped answer-conditioned distribution (METHODS.md,
    "What it estimates"). It costs one more [N, V] product, no sampling, and ignores
    ``generator``. Its weight stats are the n → ∞ values too: expectations under p.

    Stats (python floats, over mask tokens): ``w_mean``, ``w_gt1_frac`` (w > 1),
    ``w_clipped_frac`` (raw ratio > C) over all candidates; ``w_own_mean`` for z_t alone;
    ``entropy`` of p; ``n_tokens``. An all-zero mask gives a zero loss still connected
    to ``policy_logits`` and zero stats.
    """
    if policy_logits.shape != posterior_logits.shape:
        raise ValueError(f"policy {tuple(policy_logits.shape)} vs posterior {tuple(posterior_logits.shape)} logits")
    if policy_logits.dim() != 3 or tokens.shape != policy_logits.shape[:2] or mask.shape != tokens.shape:
        raise ValueError(
            f"expected logits [B, T, V] with tokens and mask [B, T]; got {tuple(policy_logits.shape)}, "
            f"{tuple(tokens.shape)}, {tuple(mask.shape)}"
        )
    exact = n_candidates == "all"
    if not exact and not (isinstance(n_candidates, int) and n_candidates >= 1):
        raise ValueError(f"n_candidates must be a positive int or 'all', got {n_candidates!r}")
    if not clip_max > 0:
        raise ValueError(f"clip_max must be > 0, got {clip_max}")

    mask = mask.bool()
    lengths = mask.sum(dim=1)
    n_tokens = int(lengths.sum())
    if n_tokens == 0:
        return policy_logits.sum() * 0.0, dict.fromkeys(STAT_KEYS, 0.0)

    # Select rationale positions first: padding costs nothing and gets exactly zero gradient.
    # Softmax in at least float32 whatever the model dtype (bf16 log-probs are too coarse).
    dtype = torch.promote_types(policy_logits.dtype, torch.float32)
    logp = F.log_softmax(policy_logits[mask], dim=-1, dtype=dtype)  # [N, V]
    own = tokens[mask].long().unsqueeze(1)  # [N, 1]
    # Each rationale weighs the same whatever its length: 1/|z| per token, then a mean over rows.
    n_rows = int((lengths > 0).sum())
    token_scale = (1.0 / lengths.clamp(min=1).to(dtype)).unsqueeze(1).expand(mask.shape)[mask] / n_rows

    log_clip = math.log(clip_max)
    with torch.no_grad():
        logp_sg = logp.detach()
        logq = F.log_softmax(posterior_logits.detach()[mask], dim=-1, dtype=dtype)
        p = logp_sg.exp()
        entropy = -(p * logp_sg).sum(dim=1)
        # Ratios in log space: no 0/0, and exp cannot overflow once capped at log C.
        own_log_ratio = logq.gather(1, own) - logp_sg.gather(1, own)
        w_own = own_log_ratio.clamp(max=log_clip).exp()

        if exact:
            log_ratio = logq - logp_sg
            target = torch.minimum(logq, logp_sg + log_clip).exp()  # sg(p·w) = min(q, C·p)
            w_mean = target.sum(dim=1).mean()
            w_gt1_frac = (p * (log_ratio.clamp(max=log_clip) > 0)).sum(dim=1).mean()
            w_clipped_frac = (p * (log_ratio > log_clip)).sum(dim=1).mean()
        else:
            candidates = own
            if n_candidates > 1:
                drawn = torch.multinomial(p, n_candidates - 1, replacement=True, generator=generator)
                candidates = torch.cat([own, drawn], dim=1)  # [N, n]
            log_ratio = logq.gather(1, candidates) - logp_sg.gather(1, candidates)
            w = log_ratio.clamp(max=log_clip).exp()
            w_mean = w.mean()
            w_gt1_frac = (w > 1).to(dtype).mean()
            w_clipped_frac = (log_ratio > log_clip).to(dtype).mean()

    if exact:
        per_token = (target * logp).sum(dim=1)
    else:
        per_token = (w * logp.gather(1, candidates)).mean(dim=1)
    loss = -(per_token * token_scale).sum()

    stats = {
        "w_mean": w_mean.item(),
        "w_gt1_frac": w_gt1_frac.item(),
        "w_clipped_frac": w_clipped_frac.item(),
        "entropy": entropy.mean().item(),
        "w_own_mean": w_own.mean().item(),
        "n_tokens": float(n_tokens),
    }
    return loss, stats


@register("intro")
class InTRO:
    needs = Needs(policy_grad=True, posterior=True, reference=False, kept_only=True)
    stat_keys = STAT_KEYS

    def compute(
        self,
        inputs: ObjectiveInputs,
        *,
        n_candidates: int | str = 5,
        clip_max: float = 200.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        if inputs.posterior_logits is None:
            raise ValueError("intro needs posterior_logits (the answer-conditioned x ⊕ y ⊕ z pass)")
        mask = inputs.mask.bool()
        if inputs.rewards is not None:
            # Only correct rationales are trained; a no-op when the loop already filtered them.
            mask = mask & (inputs.rewards > 0).unsqueeze(1)
        return intro_loss(
            inputs.policy_logits,
            inputs.posterior_logits,
            inputs.tokens,
            mask,
            n_candidates=n_candidates,
            clip_max=clip_max,
            generator=generator,
        )
