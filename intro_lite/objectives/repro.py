"""RePro [paper summary + a co-author's code; the weakest source]: process rewards from the gold
answer's log-prob along the rationale. Its prefix scores come from passes it runs itself (``extra_passes``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from intro_lite.bounds import bounded
from intro_lite.objectives.base import BatchInfo, Needs, Objective, ObjectiveInputs, PassContext, Row, register
from intro_lite.objectives.common import (STD_EPS, batch_info, check_shapes, check_whole_groups, group_inputs,
                                          group_slots, grpo_advantages, masked_mean, require, surrogate_args,
                                          surrogate_loss, token_entropy, token_logprobs)

REPRO_BOUNDARY_MARKERS = (".\n", "?\n", "\n\n")


@dataclass(frozen=True)
class ReproConfig:
    w: float = bounded(0.5, ge=0, le=1)
    alpha: float = bounded(0.1, ge=0)
    epsilon: float = bounded(0.2, gt=0, lt=1)
    beta: float = bounded(0.0, ge=0)  # [infer]; > 0 adds the k3 KL
    std_eps: float = bounded(STD_EPS, gt=0)
    top_k: int = bounded(10, ge=1)  # scored segment boundaries per rationale (highest policy entropy)
    boundary_markers: list[str] = field(default_factory=lambda: list(REPRO_BOUNDARY_MARKERS))
    answer_template: str = "\\boxed{{{answer}}}"  # the gold answer's text, scored after each prefix


REPRO_STAT_KEYS = (
    "score_mean", "magnitude_mean", "stability_mean", "kendall_tau_final", "gold_logprob_gain",
    "process_reward_abs_mean", "process_adv_abs_mean", "zero_var_frac", "clip_frac", "ratio_mean", "kl",
    "entropy", "n_points", "n_tokens", "n_sequences",
)


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
    prefix_scores: Tensor, valid: Tensor, *, w: float = ReproConfig.w, min_abs_base: float = 1e-8
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
def normalise_within_groups(values: Tensor, holds: Tensor, group_ids: Tensor, eps: float = STD_EPS) -> Tensor:
    """(r̃ − mean)/(std + eps) with mean and Bessel std pooled over every process reward of the
    prompt group (all its rows' scored points) [infer: pooled, same std convention as GRPO]."""
    _, uslot, _ = group_slots(group_ids[:1], group_ids)
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
    w: float = ReproConfig.w,
    alpha: float = ReproConfig.alpha,
    epsilon: float = ReproConfig.epsilon,
    beta: float = ReproConfig.beta,
    std_eps: float = ReproConfig.std_eps,
) -> tuple[Tensor, dict[str, float]]:
    """RePro [paper summary + code; weakest source]::

        S_j  from ``repro_point_scores`` (w = 0.5), r̃_j = S_j − S_{j−1} on token p_j − 1
        r̃   normalised within the prompt group (``normalise_within_groups``)
        Ã_t  = Σ_{t' ≥ t} r̃_{t'};   A_it = Â_i(GRPO) + α·Ã_it (α = 0.1)
        loss = −clipped surrogate (ε = 0.2), token mean over the batch (N = Σ ``batch.lengths``)

    ``prefix_positions`` ``[B, P]``: ascending prefix lengths p (first 0, last |z|; pad −1),
    ``prefix_scores``: J̃_p. Process rewards go to every rollout, correct or not [infer]. β = 0
    [infer], > 0 adds the k3 KL. Every prompt's G rows must be in this micro-batch."""
    check_shapes(policy_logits, tokens, mask)
    rewards = rewards.detach()  # a fixed input: advantages never carry gradient
    mask = mask.bool()
    if prefix_positions.shape != prefix_scores.shape or prefix_positions.shape[0] != tokens.shape[0]:
        raise ValueError("prefix_positions and prefix_scores must both be [B, P]")
    check_whole_groups(group_ids, batch, "repro")
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

    info = batch_info(batch, mask, rewards, group_ids)
    s, s_magn, s_stab, tau = repro_point_scores(prefix_scores, valid, w=w)
    raw, holds = repro_process_rewards(pos, s, valid, tokens.shape[1])
    normed = normalise_within_groups(raw.to(s.dtype), holds & mask, group_ids, eps=std_eps)
    process_adv = reverse_cumsum(normed, mask)
    outcome_adv, flat = grpo_advantages(rewards, group_ids, std_eps=std_eps, batch=batch)
    adv = outcome_adv.to(process_adv.dtype).unsqueeze(1) + alpha * process_adv
    logp, entropy = token_logprobs(policy_logits, tokens, mask, with_entropy=True)
    loss, core = surrogate_loss(
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
        "process_adv_abs_mean": masked_mean(process_adv.abs(), mask),
        "zero_var_frac": float(flat.float().mean()),
        **core,
        "n_points": float(valid.sum()),
        "n_sequences": float(tokens.shape[0]),
    }
    return loss, stats


@register("repro")
class RePro(Objective):
    needs = Needs(whole_groups=True, batch_totals=True)
    stat_keys = REPRO_STAT_KEYS
    config = ReproConfig

    def needs_for(self, cfg) -> Needs:
        return dataclasses.replace(self.needs, reference=cfg.beta != 0.0)  # the k3 KL's adapter-disabled pass

    def extra_passes(self, inputs: ObjectiveInputs, chunk: list[Row], ctx: PassContext, cfg: ReproConfig) -> dict[str, Tensor]:
        """``prefix_positions`` [B, P] long: scored prefix lengths p (ascending; first 0, last the rationale's
        end; pad -1); ``prefix_scores`` [B, P]: J̃_p, the mean log-prob of the gold answer tokens given x ⊕ z[:p]."""
        positions, scores = prefix_scores(chunk, ctx, cfg, inputs.policy_logits, inputs.mask)
        return {"prefix_positions": positions.to(inputs.tokens.device), "prefix_scores": scores.to(inputs.tokens.device)}

    def compute(self, inputs: ObjectiveInputs, cfg: ReproConfig | None = None, *, generator=None) -> tuple[Tensor, dict[str, float]]:
        c = cfg or self.default_config()
        rewards, group_ids = group_inputs(inputs, self.name)
        positions = require(inputs.extra.get("prefix_positions"), "extra['prefix_positions'] (its extra_passes)", self.name)
        scores = require(inputs.extra.get("prefix_scores"), "extra['prefix_scores'] (its extra_passes)", self.name)
        return repro_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, rewards, group_ids, positions, scores,
            **surrogate_args(inputs),
            w=c.w, alpha=c.alpha, epsilon=c.epsilon, beta=c.beta, std_eps=c.std_eps,
        )


@torch.no_grad()
def prefix_scores(chunk: list[Row], ctx: PassContext, c: ReproConfig, policy_logits: Tensor, mask: Tensor):
    """J̃_p = mean log-prob of the gold answer's tokens after x ⊕ z[:p], at 0, the top-k entropy
    segment boundaries and |z| without its EOS (docs/objectives.md). Returns (positions [B, P], scores [B, P]), padded -1 / 0."""
    entropy = token_entropy(policy_logits, mask)
    tok, points_all, scores_all = ctx.tokenizer, [], []
    for b, r in enumerate(chunk):
        boundary = torch.tensor(segment_boundaries([tok.decode([t]) for t in r.suffix[: r.n_loss]], tuple(c.boundary_markers))
                                + [False] * (entropy.shape[1] - r.n_loss))
        # The rationale ends before its EOS: the answer is scored where the text stops, never after EOS.
        end = r.n_loss - int(r.n_loss > 0 and r.suffix[r.n_loss - 1] == tok.eos_token_id)
        points = select_prefix_points(entropy[b].cpu(), boundary, end, k=c.top_k).tolist()
        answer = tok(c.answer_template.format(answer=ctx.problems[r.prompt].answer), add_special_tokens=False)["input_ids"]
        logits, tokens, amask = ctx.logits([r.x + r.suffix[:p] for p in points], [answer] * len(points))
        lp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        points_all.append(points)
        scores_all.append(((lp * amask).sum(1) / amask.sum(1)).tolist())
    P = max(len(p) for p in points_all)
    positions = torch.tensor([p + [-1] * (P - len(p)) for p in points_all])
    scores = torch.tensor([s + [0.0] * (P - len(s)) for s in scores_all])
    return positions, scores


def segment_boundaries(pieces: list[str], markers: tuple[str, ...] = REPRO_BOUNDARY_MARKERS) -> list[bool]:
    """Per token: does the text before it end with a segment marker (".\\n", "?\\n", "\\n\\n")?
    ``pieces`` are the decoded text of each rationale token id. Token 0 is never a boundary."""
    out, text = [], ""
    for piece in pieces:
        out.append(bool(text) and text.endswith(markers))
        text += piece
    return out


@torch.no_grad()
def select_prefix_points(entropy: Tensor, boundary: Tensor, length: int, k: int = ReproConfig.top_k) -> Tensor:
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
