"""InTRO loss (In-Token Rationality Optimization, arXiv 2511.09865, Eq. 7; docs/objectives.md) as a pure tensor function."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from intro_lite.bounds import bounded
from intro_lite.objectives.base import Needs, Objective, ObjectiveInputs, capture_tokens, capturing, register
from intro_lite.rewards import CORRECT_ABOVE

DEFAULT_CHUNK_SIZE = 128  # positions per chunk of intro_loss_from_hidden (intro.logits_chunk_size)
STAT_KEYS = ("w_mean", "w_gt1_frac", "w_clipped_frac", "entropy", "w_own_mean", "w_sq_mean", "n_tokens")


@dataclass(frozen=True)
class IntroConfig:
    n_candidates: int | Literal["all"] = bounded(5, ge=1, le=4096, also=("all",))  # more: use "all"
    clip_max: float = bounded(200.0, gt=0)
    # > 0: loss from hidden states, logits made this many positions at a time; 0 = full logits
    logits_chunk_size: int = bounded(DEFAULT_CHUNK_SIZE, ge=0)
    # Who reads the hint: "policy" (the paper), "base" (the adapter disabled: the frozen start model), "ema"
    # or "lagged" (a moving average / a snapshot of the adapter: train/teacher.py).
    teacher: Literal["policy", "base", "ema", "lagged"] = "policy"
    teacher_decay: float = bounded(0.99, ge=0, le=1)  # "ema": t <- decay * t + (1 - decay) * policy, each step
    teacher_refresh: int = bounded(10, ge=1)  # "lagged": t <- policy every this many steps
    # Every this many steps (0 = never), the teacher's drift on monitor_prompts fixed prompts: train/monitor.py.
    monitor_every: int = bounded(10, ge=0)
    monitor_prompts: int = bounded(32, ge=1)


def draw_uniforms(n_tokens: int, n_candidates: int, generator: torch.Generator | None, *, device, dtype,
                  lengths: Tensor | None = None, row_seeds: Tensor | None = None) -> Tensor:
    """The uniforms behind the n−1 drawn candidates of every mask token, ``[N, n−1]``.

    Both loss paths draw them here, before any logits are seen, so a position-chunked pass
    consumes the same numbers as the whole-batch pass. Without ``row_seeds``: one call on
    ``generator``. With them (``[B]``, and ``lengths`` ``[B]`` the rows' mask-token counts): row b's
    ``lengths[b]`` rows of uniforms come from a generator seeded ``row_seeds[b]``, so a row draws the
    same numbers whichever rows share the micro-batch (or the data-parallel rank) with it."""
    if row_seeds is None:
        return torch.rand((n_tokens, n_candidates - 1), generator=generator, device=device, dtype=dtype)
    parts = [torch.rand((n, n_candidates - 1), generator=torch.Generator(device=device).manual_seed(seed),
                        device=device, dtype=dtype) for n, seed in zip(lengths.tolist(), row_seeds.tolist())]
    return torch.cat(parts) if parts else torch.empty((0, n_candidates - 1), device=device, dtype=dtype)


def inverse_cdf_draws(p: Tensor, u: Tensor) -> Tensor:
    """Token ids ``[N, k]``: row i's ``u[i, j]``-quantile of the categorical ``p[i]`` (``[N, V]``).

    With ``u ~ U[0, 1)`` these are i.i.d. draws from ``p`` with replacement (what
    ``torch.multinomial(p, k, replacement=True)`` samples); a zero-probability token is never
    drawn. Row-wise, so the draws of a row do not depend on which other rows share the call."""
    cdf = torch.cumsum(p, dim=1)
    return torch.searchsorted(cdf, (u * cdf[:, -1:]).contiguous(), right=True).clamp_(max=p.shape[1] - 1)


def intro_loss(
    policy_logits: Tensor,
    posterior_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    *,
    n_candidates: int | str = IntroConfig.n_candidates,
    clip_max: float = IntroConfig.clip_max,
    generator: torch.Generator | None = None,
    row_seeds: Tensor | None = None,
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
    replacement from sg(p(·|t)) at temperature 1, by inverse CDF from uniforms drawn
    up front (``draw_uniforms``: one ``torch.rand([N, n−1])`` call on ``generator``,
    which must live on the logits' device, or with ``row_seeds`` ``[B]`` one generator
    per row seeded by it), so the position-chunked
    ``intro_loss_from_hidden`` draws the very same candidates. In expectation over the
    draws, position t contributes
    ``((n−1)/n)·Σ_v p(v)·w(v)·log p(v) + (1/n)·w(z_t)·log p(z_t)``, gradient through log p.

    ``n_candidates="all"`` is the n → ∞ limit of that expectation: the own-token term
    vanishes as 1/n and position t contributes the zero-variance full-vocabulary sum
    ``Σ_v sg(min(q(v), C·p(v))) · log p(v)`` (= Σ_v sg(p·w)·log p), i.e. forward-KL
    distillation onto the clipped answer-conditioned distribution (docs/objectives.md,
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
        capture_tokens(lengths, w=w_own.squeeze(1), log_q_over_p=own_log_ratio.squeeze(1))

        if exact:
            log_ratio = logq - logp_sg
            target = torch.minimum(logq, logp_sg + log_clip).exp()  # sg(p·w) = min(q, C·p)
            w_mean = target.sum(dim=1).mean()
            w_gt1_frac = (p * (log_ratio.clamp(max=log_clip) > 0)).sum(dim=1).mean()
            w_clipped_frac = (p * (log_ratio > log_clip)).sum(dim=1).mean()
            w_sq_mean = (target * log_ratio.clamp(max=log_clip).exp()).sum(dim=1).mean()  # E_p[w²] = Σ p·w·w
        else:
            candidates = own
            if n_candidates > 1:
                u = draw_uniforms(n_tokens, n_candidates, generator, device=p.device, dtype=dtype, lengths=lengths,
                                  row_seeds=row_seeds)
                candidates = torch.cat([own, inverse_cdf_draws(p, u)], dim=1)  # [N, n]
            log_ratio = logq.gather(1, candidates) - logp_sg.gather(1, candidates)
            w = log_ratio.clamp(max=log_clip).exp()
            w_mean = w.mean()
            w_gt1_frac = (w > 1).to(dtype).mean()
            w_clipped_frac = (log_ratio > log_clip).to(dtype).mean()
            w_sq_mean = (w * w).mean()

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
        "w_sq_mean": w_sq_mean.item(),  # with w_mean, the spread of w (the collapse alarm)
        "n_tokens": float(n_tokens),
    }
    return loss, stats


def intro_loss_from_hidden(
    policy_hidden: Tensor,
    posterior_hidden: Tensor,
    lm_head_weight: Tensor,
    tokens: Tensor,
    mask: Tensor,
    *,
    n_candidates: int | str = IntroConfig.n_candidates,
    clip_max: float = IntroConfig.clip_max,
    generator: torch.Generator | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    row_seeds: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``intro_loss`` from the last hidden states, never holding full-vocabulary tensors for all positions.

    ``policy_logits = policy_hidden @ lm_head_weight.T`` (likewise the posterior), but the logits
    are made ``chunk_size`` mask positions at a time: each chunk's logits → log-softmax → candidate
    gathers → weights → loss contribution, and its gradient w.r.t. the logits in closed form,

        d/dlogits Σ_i w_i·log p(v_i) = Σ_i w_i·(e_{v_i} − p)       (integer n)
        d/dlogits Σ_v t_v·log p(v)   = t − (Σ_v t_v)·p              ("all", t = sg(min(q, C·p)))

    pushed through the LM head at once (into the policy hidden states, and into
    ``lm_head_weight`` if it requires grad) and kept for the backward pass, which only scales
    them. Peak memory is a few ``[chunk_size, V]`` buffers instead of several ``[N, V]`` ones.

    Shapes: hidden ``[B, T, H]`` (position t predicts ``tokens[:, t]``; rows under mask 0 are
    never read) or ``[N, H]`` holding only the mask positions in row-major order
    (``N = mask.sum()``); ``lm_head_weight`` ``[V, H]`` (no bias); ``tokens``, ``mask`` ``[B, T]``.
    Logits are computed in the hidden states' dtype and the softmax in at least float32, as
    ``suffix_logits`` + ``intro_loss`` do. Gradient flows only through ``policy_hidden`` (and
    the weight), never ``posterior_hidden``. Same loss, gradient and stats as ``intro_loss`` on
    the materialised logits, with identical candidate draws for the same ``generator``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if policy_hidden.shape != posterior_hidden.shape:
        raise ValueError(f"policy {tuple(policy_hidden.shape)} vs posterior {tuple(posterior_hidden.shape)} hidden states")
    if tokens.dim() != 2 or mask.shape != tokens.shape:
        raise ValueError(f"expected tokens and mask [B, T]; got {tuple(tokens.shape)}, {tuple(mask.shape)}")
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != policy_hidden.shape[-1]:
        raise ValueError(f"lm_head_weight {tuple(lm_head_weight.shape)} does not match hidden size {policy_hidden.shape[-1]}")
    exact = n_candidates == "all"
    if not exact and not (isinstance(n_candidates, int) and n_candidates >= 1):
        raise ValueError(f"n_candidates must be a positive int or 'all', got {n_candidates!r}")
    if not clip_max > 0:
        raise ValueError(f"clip_max must be > 0, got {clip_max}")

    mask = mask.bool()
    lengths = mask.sum(dim=1)
    n_tokens = int(lengths.sum())
    if policy_hidden.dim() == 3:
        if policy_hidden.shape[:2] != tokens.shape:
            raise ValueError(f"hidden {tuple(policy_hidden.shape)} vs tokens {tuple(tokens.shape)}")
        h, hq = policy_hidden[mask], posterior_hidden.detach()[mask]
    elif policy_hidden.dim() == 2:
        if policy_hidden.shape[0] != n_tokens:
            raise ValueError(f"hidden {tuple(policy_hidden.shape)}: [N, H] needs N = mask.sum() = {n_tokens}")
        h, hq = policy_hidden, posterior_hidden.detach()
    else:
        raise ValueError(f"expected hidden [B, T, H] or [N, H]; got {tuple(policy_hidden.shape)}")
    if n_tokens == 0:
        zero = policy_hidden.sum() * 0.0
        if lm_head_weight.requires_grad:
            zero = zero + lm_head_weight.sum() * 0.0
        return zero, dict.fromkeys(STAT_KEYS, 0.0)

    dtype = torch.promote_types(h.dtype, torch.float32)
    own = tokens[mask].long()
    n_rows = int((lengths > 0).sum())
    token_scale = (1.0 / lengths.clamp(min=1).to(dtype)).unsqueeze(1).expand(mask.shape)[mask] / n_rows
    u = None
    if not exact and n_candidates > 1:
        u = draw_uniforms(n_tokens, n_candidates, generator, device=h.device, dtype=dtype, lengths=lengths,
                          row_seeds=row_seeds)
    n = 0 if exact else n_candidates
    loss, sums = _ChunkedIntro.apply(h, hq, lm_head_weight, own, token_scale, u, n, math.log(clip_max), chunk_size)
    if capturing():
        r = _CAPTURED.pop("own_log_ratio")
        capture_tokens(lengths, w=r.clamp(max=math.log(clip_max)).exp(), log_q_over_p=r)
    # sums: Σw, Σ[w > 1], Σ[ratio > C], Σ entropy, Σ w_own, Σw² over the mask tokens (float64)
    n_cand = n_tokens if exact else n_tokens * n_candidates
    sums = sums.tolist()
    stats = {
        "w_mean": sums[0] / (n_tokens if exact else n_cand),
        "w_gt1_frac": sums[1] / (n_tokens if exact else n_cand),
        "w_clipped_frac": sums[2] / (n_tokens if exact else n_cand),
        "entropy": sums[3] / n_tokens,
        "w_own_mean": sums[4] / n_tokens,
        "w_sq_mean": sums[5] / (n_tokens if exact else n_cand),
        "n_tokens": float(n_tokens),
    }
    return loss, stats


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a[i, v]·b[i, v] per row. (Not a batched mat-vec: MKL's fp32 bmm of this shape summed
    152k terms to 2.5e-4 relative error, vecdot's reduction to 1.3e-7.)"""
    return torch.linalg.vecdot(a, b)


_CAPTURED: dict[str, Tensor] = {}  # _ChunkedIntro.forward's per-token log q/p, while capturing()


class _ChunkedIntro(torch.autograd.Function):
    """Loss and closed-form gradient of the InTRO objective, chunk by chunk over positions."""

    @staticmethod
    def forward(ctx, h, hq, weight, own, token_scale, u, n, log_clip, chunk_size):
        dtype = token_scale.dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32),
                             device=weight.device) if need_w else None
        loss = torch.zeros((), dtype=torch.float64, device=h.device)
        sums = torch.zeros(6, dtype=torch.float64, device=h.device)
        own_ratios = [] if capturing() else None  # per-token log q/p for samples.jsonl, on sample steps only
        N = h.shape[0]
        # [C, V] buffers reused by every chunk: a fresh 16-80 MB output per product costs page faults
        # (bench: 29 -> 26 ms per [128, 512] x [512, 32000] product).
        C, V = min(chunk_size, N), weight.shape[0]
        logits_buf = torch.empty((C, V), dtype=h.dtype, device=h.device)
        logp_buf, logq_buf = (torch.empty((C, V), dtype=dtype, device=h.device) for _ in range(2))
        weight_t = weight.t()
        for s in range(0, N, chunk_size):
            e = min(s + chunk_size, N)
            hc, own_c, scale_c = h[s:e], own[s:e, None], token_scale[s:e]
            logp = torch.log_softmax(torch.mm(hc, weight_t, out=logits_buf[: e - s]), 1, dtype=dtype, out=logp_buf[: e - s])
            logq = torch.log_softmax(torch.mm(hq[s:e], weight_t, out=logits_buf[: e - s]), 1, dtype=dtype, out=logq_buf[: e - s])
            p = logp.exp()
            sums[3] -= torch.dot(p.view(-1), logp.view(-1))  # entropy, a statistic: one flat dot, no [C, V] product
            own_log_ratio = logq.gather(1, own_c) - logp.gather(1, own_c)
            sums[4] += own_log_ratio.clamp(max=log_clip).exp().sum()
            if own_ratios is not None:
                own_ratios.append(own_log_ratio.squeeze(1))
            if n == 0:  # "all": t = min(q, C·p); loss −Σ t·log p; d/dlogits = −(t − Σt·p)
                buf = logq - logp  # log ratio
                sums[2] += _rowdot(p, (buf > log_clip).to(dtype)).sum()
                sums[1] += _rowdot(p, (buf.clamp_(max=log_clip) > 0).to(dtype)).sum()
                sums[5] += _rowdot(p, buf.mul(2).exp_()).sum()
                torch.add(logp, log_clip, out=buf)
                target = torch.minimum(logq, buf, out=buf).exp_()
                total = target.sum(dim=1, keepdim=True)
                sums[0] += total.sum()
                per_token = _rowdot(target, logp)
                grad = p.mul_(-total).add_(target)  # reuses p's buffer
                del buf, target
            else:  # candidates: own token + n−1 inverse-CDF draws; d/dlogits = −(1/n)Σ_i w_i (e_{v_i} − p)
                cand = own_c if u is None else torch.cat([own_c, inverse_cdf_draws(p, u[s:e])], dim=1)
                log_ratio = logq.gather(1, cand) - logp.gather(1, cand)
                w = log_ratio.clamp(max=log_clip).exp()
                sums[0] += w.sum()
                sums[1] += (w > 1).sum()
                sums[2] += (log_ratio > log_clip).sum()
                sums[5] += (w * w).sum()
                per_token = (w * logp.gather(1, cand)).mean(dim=1)
                grad = p.mul_(-w.sum(dim=1, keepdim=True) / n).scatter_add_(1, cand, w / n)
            loss -= (per_token * scale_c).sum()
            del logp, logq
            grad.mul_(-scale_c.unsqueeze(1))  # d loss / d logits of this chunk
            grad = grad.to(h.dtype)
            if need_h:
                torch.mm(grad, weight, out=grad_h[s:e])
            if need_w:
                grad_w.addmm_(grad.t().to(grad_w.dtype), hc.to(grad_w.dtype))
            del grad, p
        if own_ratios is not None:
            _CAPTURED["own_log_ratio"] = torch.cat(own_ratios)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(sums)
        return loss.to(dtype), sums

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums):
        grad_h, grad_w = ctx.saved_tensors
        gh = None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype)
        gw = None if grad_w is None else (grad_w * grad_loss.to(grad_w.dtype)).to(ctx.weight_dtype)
        return gh, None, gw, None, None, None, None, None, None


@register("intro")
class InTRO(Objective):
    needs = Needs(posterior=True, kept_only=True)
    stat_keys = STAT_KEYS
    config = IntroConfig

    def needs_for(self, cfg: IntroConfig) -> Needs:
        # With a chunk size the loop hands over last hidden states + the LM head weight instead of logits.
        return dataclasses.replace(self.needs, hidden_states=cfg.logits_chunk_size > 0, frozen_posterior=cfg.teacher == "base",
                                   teacher_decay=cfg.teacher_decay if cfg.teacher == "ema" else None,
                                   teacher_refresh=cfg.teacher_refresh if cfg.teacher == "lagged" else 0,
                                   teacher_monitor_every=cfg.monitor_every, teacher_monitor_prompts=cfg.monitor_prompts)

    def compute(self, inputs: ObjectiveInputs, cfg: IntroConfig | None = None, *,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """``intro_loss`` on the logits, or ``intro_loss_from_hidden`` (chunks of ``logits_chunk_size``
        positions; DEFAULT_CHUNK_SIZE when it is 0) when the inputs carry hidden states and the LM head weight."""
        cfg = cfg or self.default_config()
        hidden = inputs.policy_hidden is not None
        if hidden and (inputs.posterior_hidden is None or inputs.lm_head_weight is None):
            raise ValueError("intro with policy_hidden needs posterior_hidden and lm_head_weight too")
        if not hidden and inputs.posterior_logits is None:
            raise ValueError("intro needs posterior_logits (the answer-conditioned x ⊕ y ⊕ z pass)")
        mask = inputs.mask.bool()
        if inputs.rewards is not None:
            # Only correct rationales (reward > 0.5) are trained; a no-op when the loop already filtered them.
            mask = mask & (inputs.rewards > CORRECT_ABOVE).unsqueeze(1)
        draws = dict(n_candidates=cfg.n_candidates, clip_max=cfg.clip_max, generator=generator, row_seeds=inputs.row_seeds)
        if hidden:
            return intro_loss_from_hidden(inputs.policy_hidden, inputs.posterior_hidden, inputs.lm_head_weight,
                                          inputs.tokens, mask, chunk_size=cfg.logits_chunk_size or DEFAULT_CHUNK_SIZE,
                                          **draws)
        return intro_loss(inputs.policy_logits, inputs.posterior_logits, inputs.tokens, mask, **draws)
