"""The probe's statistics as pure functions of tensors and lists (no model, no engine): testable by hand.

Notation (docs/probe.md): p = π(·|x, z<t) (the policy), q = π(·|x ⊕ y, z<t) (the answer-conditioned
teacher), w(v) = clip(q(v)/p(v), 0, C) (InTRO's weight), log w = min(log q − log p, log C).
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

ANSWER_MARKERS = ("\\boxed", "answer is")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
PER_POSITION = ("kl", "abs_log_w", "w_own", "entropy", "tv")  # what the class and decile tables average


@dataclass
class Thresholds:
    """The verdict's cut-offs (docs/probe.md, "Verdict"); each is a `probe` option."""

    entropy: float = 0.5  # nats: the policy is "uncertain" at a position above this
    tv: float = 0.1  # total variation between q and p above which "the teacher moves mass"
    moved: float = 0.05  # "signal" needs at least this fraction of "rest" positions uncertain and moved
    rho: float = 0.3  # "signal" needs the posterior check's pooled Spearman at least this
    min_pairs: int = 8  # fewer (prefix, candidate) pairs than this: the check cannot support "signal"
    hint_gain: float = 0.0  # "misleading" if hinted accuracy - plain accuracy <= this
    eos_ratio: float = 0.9  # "misleading" if the geometric mean of q(EOS)/p(EOS) where kept rationales end < this


def position_stats(h_p: Tensor, h_q: Tensor, weight: Tensor, own: Tensor, eos_id: int, *,
                   top_k: int = 4, clip_max: float = 200.0, chunk_size: int = 128) -> dict[str, Tensor]:
    """Per-position statistics of p = softmax(h_p Wᵀ) and q = softmax(h_q Wᵀ), ``chunk_size`` rows at a time.

    ``h_p``, ``h_q`` ``[N, H]`` (the policy's and the teacher's last hidden states at the positions
    predicting ``own`` ``[N]``), ``weight`` the LM head ``[V, H]``. Only ``[chunk_size, V]`` buffers
    exist at once; everything returned is ``[N]`` or ``[N, top_k]`` (float32 at least):
    ``kl`` = KL(q‖p), ``log_w`` = min(log q − log p, log C) of the own token, ``entropy`` = H(p),
    ``tv`` = ½Σ|q − p|, ``logp_eos``/``logq_eos``, and the policy's ``top_k`` tokens ``top_ids`` with
    their ``top_logp``/``top_logq`` (the posterior check's candidates)."""
    dtype = torch.promote_types(h_p.dtype, torch.float32)
    cols: dict[str, list[Tensor]] = {k: [] for k in ("kl", "log_w", "entropy", "tv", "logp_eos", "logq_eos",
                                                       "top_ids", "top_logp", "top_logq")}
    k = min(top_k, weight.shape[0])
    for s in range(0, h_p.shape[0], chunk_size):
        logp = torch.log_softmax(h_p[s : s + chunk_size] @ weight.t(), 1, dtype=dtype)
        logq = torch.log_softmax(h_q[s : s + chunk_size] @ weight.t(), 1, dtype=dtype)
        o = own[s : s + chunk_size, None].long()
        p, q = logp.exp(), logq.exp()
        cols["kl"].append(torch.linalg.vecdot(q, logq - logp))
        cols["entropy"].append(-torch.linalg.vecdot(p, logp))
        cols["tv"].append(0.5 * (q - p).abs_().sum(1))
        del p, q
        cols["log_w"].append((logq.gather(1, o) - logp.gather(1, o)).squeeze(1).clamp(max=math.log(clip_max)))
        cols["logp_eos"].append(logp[:, eos_id])
        cols["logq_eos"].append(logq[:, eos_id])
        top_logp, top_ids = logp.topk(k, dim=1)
        cols["top_ids"].append(top_ids)
        cols["top_logp"].append(top_logp)
        cols["top_logq"].append(logq.gather(1, top_ids))
        del logp, logq
    return {key: torch.cat(v) for key, v in cols.items()}


CLASSES = ("rest", "final_value", "answer")  # position classes, in the order of token_classes' codes


def final_value(text: str, markers: tuple[str, ...] = ANSWER_MARKERS) -> tuple[int, re.Match | None]:
    """(where the last occurrence of any answer marker starts, −1 if none; the last number before it)."""
    cut = max(text.rfind(m) for m in markers)
    found = list(NUMBER.finditer(text if cut < 0 else text[:cut]))
    return cut, (found[-1] if found else None)


def token_classes(pieces: list[str], markers: tuple[str, ...] = ANSWER_MARKERS) -> Tensor:
    """Class code of each token of a rationale whose tokens decode to ``pieces``: 2 = "answer" from the
    token holding the first character of the LAST occurrence of any marker to the end; 1 = "final_value",
    the tokens overlapping any spelling, before that marker, of the last number before it (the value the
    answer restates, e.g. "which gives 46. So the result is 46.": the hint gives these digits away);
    0 = "rest". Without a marker every token is "rest"."""
    text = "".join(pieces)
    cut, value = final_value(text, markers)
    ends = list(itertools.accumulate(len(x) for x in pieces))
    codes = torch.zeros(len(pieces), dtype=torch.long)
    if cut < 0:
        return codes
    for m in NUMBER.finditer(text[:cut]) if value else ():
        if m.group() == value.group():
            codes[bisect.bisect_right(ends, m.start()) : bisect.bisect_left(ends, m.end()) + 1] = 1
    codes[bisect.bisect_right(ends, cut) :] = 2
    return codes


def last_number_before_answer(text: str, markers: tuple[str, ...] = ANSWER_MARKERS) -> str | None:
    """The last numeric literal before the last answer marker (in the whole text if there is none)."""
    value = final_value(text, markers)[1]
    return value.group() if value else None


def same_number(a: str | None, b: str) -> bool:
    """``a`` and ``b`` name the same number (24 = 24.0 = 24.00); False if either is not a plain number."""
    try:
        return a is not None and float(a) == float(b.replace(",", "").strip())
    except ValueError:
        return False


def relative_deciles(lengths: list[int]) -> Tensor:
    """For rows of these lengths, every position's decile floor(10·t/L) in row-major order ``[Σ L]``."""
    return torch.cat([(torch.arange(n) * 10) // n for n in lengths if n > 0] or [torch.zeros(0, dtype=torch.long)])


def masked_means(values: dict[str, Tensor], where: Tensor) -> dict[str, float | None]:
    """Mean of each ``[N]`` value over ``where`` (bool ``[N]``), plus ``n``; None if empty."""
    n = int(where.sum())
    out: dict[str, float | None] = {k: (v[where].double().mean().item() if n else None) for k, v in values.items()}
    out["n"] = n
    return out


def spearman(a: list[float] | Tensor, b: list[float] | Tensor) -> float | None:
    """Spearman's rank correlation (Pearson on ranks, ties get their mean rank); None if fewer than
    two points or either side is constant."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.numel() < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.square().sum() * rb.square().sum()).sqrt()
    return None if den == 0 else (ra @ rb / den).item()


def _ranks(x: Tensor) -> Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    for v in torch.unique(x):  # ties share the mean of their ranks
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def posterior_check(logp: Tensor, logq: Tensor, successes: Tensor, rollouts: int, *, alpha: float = 0.5,
                    clip_max: float = 200.0) -> dict:
    """The paper's posterior check on K prefixes with c candidate tokens each.

    ``logp``, ``logq`` ``[K, c]``: log p(v), log q(v) of the candidates; ``successes`` ``[K, c]``:
    of ``rollouts`` continuations from x ⊕ z<t ⊕ v, how many were graded correct. With add-α
    smoothing P̂(y|z<t,v) = (s + α)/(M + 2α), and P̂(y|z<t) = Σ_v p̃(v)·P̂(y|z<t,v) with p̃ = p
    renormalised over the candidates, the Monte-Carlo weight is log w*(v) = log P̂(y|z<t,v) − log P̂(y|z<t).
    Returns the Spearman correlation of log w(v) = min(log q − log p, log C) with log w*(v) pooled over
    all pairs and averaged within prefixes, and KL(q̃‖π*) vs KL(p̃‖π*) with π* ∝ p̃·P̂ the Bayes posterior
    over the candidates (q̃ likewise renormalised): is the teacher nearer to it than the policy?"""
    logp, logq = logp.double(), logq.double()
    p_hat = (successes.double() + alpha) / (rollouts + 2 * alpha)
    p_tilde = torch.softmax(logp, dim=1)
    q_tilde = torch.softmax(logq, dim=1)
    p_y = (p_tilde * p_hat).sum(1, keepdim=True)
    log_w_mc = p_hat.log() - p_y.log()
    log_w = (logq - logp).clamp(max=math.log(clip_max))
    log_post = (p_tilde * p_hat / p_y).log()
    within = [r for r in (spearman(a, b) for a, b in zip(log_w, log_w_mc)) if r is not None]

    def kl(x: Tensor) -> float:
        return (x * (x.log() - log_post)).sum(1).mean().item()

    return {
        "spearman_pooled": spearman(log_w.flatten(), log_w_mc.flatten()),
        "spearman_within_mean": sum(within) / len(within) if within else None,
        "n_within": len(within),
        "n_pairs": int(log_w.numel()),
        "kl_teacher_to_mc_posterior": kl(q_tilde),
        "kl_policy_to_mc_posterior": kl(p_tilde),
        "candidate_mass_p": logp.exp().sum(1).mean().item(),
        "candidate_mass_q": logq.exp().sum(1).mean().item(),
        "log_w": log_w.tolist(),
        "log_w_mc": log_w_mc.tolist(),
    }


def verdict(hint_gain: float, eos_ratio: float | None, moved_rest: float | None, rho: float | None, n_pairs: int,
            t: Thresholds) -> tuple[str, list[str]]:
    """("misleading" | "signal" | "little signal", the reasons, each naming its threshold)."""
    bad = []
    if hint_gain <= t.hint_gain:
        bad.append(f"hinted - plain accuracy {hint_gain:+.3f} <= {t.hint_gain:+.3f}")
    if eos_ratio is not None and eos_ratio < t.eos_ratio:
        bad.append(f"q(EOS)/p(EOS) at rationale ends {eos_ratio:.3f} < {t.eos_ratio:.3f} (q favours continuing)")
    if bad:
        return "misleading", bad
    why = [f"uncertain-and-moved fraction of rest positions {_fmt(moved_rest)} vs >= {t.moved:.3f}",
           f"posterior-check Spearman {_fmt(rho)} vs >= {t.rho:.3f} over {n_pairs} pairs (need >= {t.min_pairs})"]
    ok = (moved_rest is not None and moved_rest >= t.moved and rho is not None and rho >= t.rho
          and n_pairs >= t.min_pairs)
    return ("signal" if ok else "little signal"), why


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
