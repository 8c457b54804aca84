"""LaTRO [paper Eq. 3-4 + code, SalesforceAIResearch/LaTRO]: RLOO on sg(log π(y|x⊕z) − β·KL) plus the
answer likelihood, from one policy pass over x ⊕ z_cut ⊕ y. Its rows cut each rollout before its answer
marker and append the gold answer y (``make_rows``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from intro_lite.bounds import bounded
from intro_lite.objectives.base import (BatchInfo, Needs, Objective, ObjectiveInputs, Row, StepRollouts, register,
                                        rollout_rows)
from intro_lite.objectives.common import (batch_info, check_shapes, check_whole_groups, group_slots,
                                          reference_logprobs_of, require, token_logprobs)

LATRO_ANSWER_MARKERS = ("The answer is", "\\boxed")


@dataclass(frozen=True)
class LatroConfig:
    beta: float = bounded(0.05, ge=0)
    answer_markers: list[str] = field(default_factory=lambda: list(LATRO_ANSWER_MARKERS))  # z is cut before the first
    answer_template: str = "The answer is \\boxed{{{answer}}}."  # y's text [infer]


LATRO_STAT_KEYS = (
    "answer_logprob", "rationale_logprob", "rationale_kl", "reward_mean", "adv_abs_mean", "n_tokens", "n_sequences",
)


@torch.no_grad()
def rloo_advantages(scores: Tensor, group_ids: Tensor) -> Tensor:
    """A_k = r_k − mean_{j≠k} r_j within each group (groups of one get 0)."""
    _, uslot, _ = group_slots(group_ids[:1], group_ids)
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
    beta: float = LatroConfig.beta,
) -> tuple[Tensor, dict[str, float]]:
    """LaTRO [paper Eq. 3-4 + code], one policy pass over x ⊕ z ⊕ y (``mask`` = z, ``answer_mask`` = y)::

        lp(z_k|x), lp(y|x⊕z_k): sequence sums of token log-probs (with gradient)
        r_k  = sg(lp(y|x⊕z_k) − β·(lp(z_k|x) − lp_0(z_k|x)))      lp_0: adapter-disabled reference
        A_k  = r_k − mean_{j≠k} r_j                                 (RLOO over the K = G samples of a prompt)
        loss = mean_k[−A_k·lp(z_k|x)] − mean_k[lp(y|x⊕z_k)]        (mean over all rows of the batch)

    β = 0.05 [paper]. The mean's denominator is the whole batch's row count (``batch.lengths``
    rows); every prompt's K rows must be in this micro-batch."""
    check_shapes(policy_logits, tokens, mask)
    mask, answer_mask = mask.bool(), answer_mask.bool()
    if bool((mask & answer_mask).any()):
        raise ValueError("latro: mask (rationale z) and answer_mask (answer y) overlap")
    check_whole_groups(group_ids, batch, "latro")
    info = batch_info(batch, mask, None, group_ids)
    n_rows = float(info.lengths.numel())
    logp = token_logprobs(policy_logits, tokens, mask | answer_mask)
    lp_z = (logp * mask).sum(1)
    lp_y = (logp * answer_mask).sum(1)
    kl_seq = torch.zeros_like(lp_z)
    if beta != 0.0:
        ref = require(reference_logprobs, "the reference pass when beta != 0", "latro")
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
class LaTRO(Objective):
    needs = Needs(reference=True, answer_suffix=True, whole_groups=True, batch_totals=True)
    stat_keys = LATRO_STAT_KEYS
    config = LatroConfig

    def needs_for(self, cfg) -> Needs:
        return dataclasses.replace(self.needs, reference=cfg.beta != 0.0)  # the k3 KL's adapter-disabled pass

    def make_rows(self, step: StepRollouts, cfg: LatroConfig | None = None) -> list[Row]:
        """Every rollout without its EOS, cut before its answer marker (keeping the rollout's own ids),
        ⊕ the gold answer y. The text the cut token held before the marker (" " of " The") starts y,
        so x ⊕ z ⊕ y reads as the rollout did up to the marker."""
        c, tok = cfg or self.default_config(), step.tokenizer
        rows = rollout_rows(step, kept_only=False)
        for r in rows:
            ids = r.suffix[:-1] if r.suffix and r.suffix[-1] == tok.eos_token_id else r.suffix
            pieces = [tok.decode([t]) for t in ids]
            keep = cut_before_marker(pieces, tuple(c.answer_markers))
            text = "".join(pieces)
            lead = text[len("".join(pieces[:keep])) : marker_start(text, tuple(c.answer_markers))]
            answer = c.answer_template.format(answer=step.problems[r.prompt].answer)
            r.suffix, r.n_loss = ids[:keep] + tok(lead + answer, add_special_tokens=False)["input_ids"], keep
            r.served_logprobs = r.served_logprobs and r.served_logprobs[:keep]  # y was not sampled
        return rows

    def compute(self, inputs: ObjectiveInputs, cfg: LatroConfig | None = None, *, generator=None) -> tuple[Tensor, dict[str, float]]:
        c = cfg or self.default_config()
        answer_mask = require(inputs.answer_mask, "answer_mask (Needs.answer_suffix)", self.name)
        group_ids = require(inputs.group_ids, "group_ids", self.name)
        return latro_loss(
            inputs.policy_logits, inputs.tokens, inputs.mask, answer_mask, group_ids,
            reference_logprobs=reference_logprobs_of(inputs, inputs.mask), batch=inputs.batch, beta=c.beta,
        )


def cut_before_marker(pieces: list[str], markers: tuple[str, ...] = LATRO_ANSWER_MARKERS) -> int:
    """How many leading tokens of a rationale to keep so that it stops before the first answer
    marker (LaTRO appends y there). ``pieces`` are the decoded text of each token id; a token that
    contains the marker's first character is dropped with everything after it. No marker: keep all."""
    cut, end = marker_start("".join(pieces), markers), 0
    if cut is None:
        return len(pieces)
    for n, piece in enumerate(pieces):
        end += len(piece)
        if end > cut:
            return n
    return len(pieces)


def marker_start(text: str, markers: tuple[str, ...] = LATRO_ANSWER_MARKERS) -> int | None:
    """Where the first answer marker starts in ``text`` (None without one)."""
    starts = [i for i in (text.find(m) for m in markers) if i >= 0]
    return min(starts) if starts else None
