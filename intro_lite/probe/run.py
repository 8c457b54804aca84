"""`intro-lite probe`: roll out with and without the answer, run the trainer's policy passes on the kept
rationales, and measure whether InTRO's teacher π(·|x ⊕ y) carries signal (docs/probe.md).

Reuses the trainer's pieces: ``tokenize_problems``/``make_engine`` (train), ``suffix_hidden`` and
``lm_head_weight`` (policy), the ``Grader``. Nothing is trained."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from intro_lite.config import Config
from intro_lite.data.problems import PromptSampler, load_problems
from intro_lite.grading import Grader
from intro_lite.io import write_atomic
from intro_lite.objectives.intro import DEFAULT_CHUNK_SIZE
from intro_lite.policy import check_adapter_matches_base, load_policy
from intro_lite.forward import lm_head_weight, suffix_hidden
from intro_lite.probe.stats import (ANSWER_MARKERS, CLASSES, Thresholds, last_number_before_answer,
                                    masked_means, position_stats, posterior_check, relative_deciles, same_number,
                                    token_classes, verdict)
from intro_lite.train.preflight import check_context_length
from intro_lite.train.loop import make_engine, tokenize_problems
from intro_lite.tiny.assets import resolve_model_path

SEED_OFFSET = 977_000_000  # the probe's rollout seeds sit away from the training loop's (seed·1_000_003 + step)


@dataclass
class ProbeSettings:
    limit: int = 64  # problems of the recipe's training data (a seeded draw, as the trainer's sampler makes)
    prefixes: int = 8  # K uncertain positions for the posterior check
    candidates: int = 4  # the policy's top tokens v tried at each
    rollouts: int = 16  # M continuations per (prefix, v)
    alpha: float = 0.5  # add-α smoothing of the success rates (Krichevsky–Trofimov)
    markers: tuple[str, ...] = ANSWER_MARKERS


def run_probe(cfg: Config, *, out: Path, adapter: str | None = None, settings: ProbeSettings | None = None,
              thresholds: Thresholds | None = None, say=print) -> dict:
    """Measure, write ``out``/results.json and ``out``/probe.png; returns the results."""
    s, t = settings or ProbeSettings(), thresholds or Thresholds()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()
        say(f"probe: {name} done in {seconds[name]:.1f} s")

    model_path = resolve_model_path(cfg.model.name_or_path)
    check_context_length(cfg, model_path)
    if adapter:
        check_adapter_matches_base(adapter, model_path)
        cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, init_adapter=str(adapter)))
    model, tok = load_policy(cfg, model_path)
    model.eval()
    problems, x_ids, xy_ids = tokenize_problems(cfg, tok, load_problems(cfg.data))
    idx = PromptSampler(len(problems), cfg.seed).next(min(s.limit, len(problems)))
    engine = make_engine(cfg, model_path)
    grader = Grader()
    lap("load")
    try:
        if cfg.lora.init_adapter:
            engine.set_adapter(cfg.lora.init_adapter)
        G, r = cfg.rollout.group_size, cfg.rollout
        gen = dict(n=G, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens, logprobs=False)
        base_seed = cfg.seed * 1_000_003 + SEED_OFFSET
        plain = [x for g in engine.generate([x_ids[i] for i in idx], seed=base_seed, **gen) for x in g]
        hinted = [x for g in engine.generate([xy_ids[i] for i in idx], seed=base_seed + 10_000_000, **gen) for x in g]
        answers = [problems[i].answer for i in idx for _ in range(G)]
        ok_plain = [g.correct for g in grader.grade(list(zip(answers, (x.text for x in plain))))]
        ok_hinted = [g.correct for g in grader.grade(list(zip(answers, (x.text for x in hinted))))]
        lap("rollouts")
        accuracy = rollout_accuracy(plain, hinted, ok_plain, ok_hinted, answers, s.markers)

        kept = [(idx[j // G], list(x.token_ids)) for j, (x, c) in enumerate(zip(plain, ok_plain)) if c and x.token_ids]
        pos = teacher_passes(cfg, model, tok, kept, x_ids, xy_ids, top_k=s.candidates)
        where = layout(kept, tok, s.markers)
        lap("passes")
        results = summarise(pos, where, t)
        results["top_kl"] = top_kl_positions(pos, where, kept, tok, problems)
        results["posterior_check"] = prefix_check(cfg, engine, grader, tok, problems, kept, pos, where, x_ids, s, t)
        lap("posterior_check")
    finally:
        grader.close()
        engine.close()
    gain = accuracy["hinted"] - accuracy["plain"]
    label, reasons = verdict(gain, results["misleading"]["eos_ratio"], results["uncertainty"]["moved_frac_rest"],
                             results["posterior_check"].get("spearman_pooled"), results["posterior_check"]["n_pairs"], t)
    results["misleading"]["hint_gain"] = gain
    results = {"model": cfg.model.name_or_path, "adapter": cfg.lora.init_adapter or None, "name": cfg.name,
               "settings": {**dataclasses.asdict(s), "n_problems": len(idx), "group_size": G, "temperature": r.temperature,
                            "top_p": r.top_p, "max_new_tokens": r.max_new_tokens, "seed": cfg.seed,
                            "prompt_template": cfg.data.prompt_template, "hint_template": cfg.data.hint_template},
               "thresholds": dataclasses.asdict(t), "accuracy": accuracy, **results,
               "verdict": {"label": label, "reasons": reasons}, "seconds": seconds,
               "load_average": [round(x, 2) for x in os.getloadavg()]}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps(results, indent=2))
    from intro_lite.probe.report import plot

    plot(results, out / "probe.png")
    return results


def rollout_accuracy(plain, hinted, ok_plain, ok_hinted, answers, markers) -> dict:
    """Accuracy with x and with x ⊕ y, and whether correct rationales derive y: their last number before
    the final answer marker equals y (a hinted rationale that only copies y into the box does not)."""
    def derived(samples, ok):
        return [c and same_number(last_number_before_answer(x.text, markers), y) for x, c, y in zip(samples, ok, answers)]

    d_plain, d_hinted, n = derived(plain, ok_plain), derived(hinted, ok_hinted), len(plain)
    return {"n_rollouts": n, "plain": sum(ok_plain) / n, "hinted": sum(ok_hinted) / n,
            "hinted_reaching_y": sum(d_hinted) / n,
            "hinted_derived_frac": sum(d_hinted) / sum(ok_hinted) if any(ok_hinted) else None,
            "plain_derived_frac": sum(d_plain) / sum(ok_plain) if any(ok_plain) else None,
            "plain_mean_length": sum(len(x.token_ids) for x in plain) / n,
            "hinted_mean_length": sum(len(x.token_ids) for x in hinted) / n,
            "plain_truncated": sum(x.finish_reason == "length" for x in plain) / n,
            "hinted_truncated": sum(x.finish_reason == "length" for x in hinted) / n}


@torch.no_grad()
def teacher_passes(cfg: Config, model, tok, kept, x_ids, xy_ids, *, top_k: int) -> dict[str, torch.Tensor]:
    """The trainer's two passes (x ⊕ z and x ⊕ y ⊕ z, last hidden states) per micro-batch of kept
    rationales, reduced at once to per-position statistics (``position_stats``) in row-major order."""
    W, parts = lm_head_weight(model), []
    chunk = cfg.intro.logits_chunk_size or DEFAULT_CHUNK_SIZE
    mb = cfg.train.micro_batch_size
    for b in range(0, len(kept), mb):
        rows = kept[b : b + mb]
        zs = [z for _, z in rows]
        h_p, tokens, mask = suffix_hidden(model, [x_ids[i] for i, _ in rows], zs, tok.pad_token_id)
        h_q, _, _ = suffix_hidden(model, [xy_ids[i] for i, _ in rows], zs, tok.pad_token_id)
        m = mask.bool()
        stats = position_stats(h_p[m], h_q[m], W, tokens[m], tok.eos_token_id, top_k=top_k,
                               clip_max=cfg.intro.clip_max, chunk_size=chunk)
        parts.append({k: v.cpu() for k, v in stats.items()})
        del h_p, h_q
    if not parts:
        return {}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def layout(kept, tok, markers) -> dict:
    """Where each position of the kept rationales sits, row-major: its ``row``, index ``at``, its class
    ``cls`` (``token_classes``: 0 rest, 1 final value, 2 answer), whether it is the ``end`` (an EOS closing it)."""
    lengths = [len(z) for _, z in kept]
    if not lengths:
        return {"lengths": []}
    ends = torch.zeros(sum(lengths), dtype=torch.bool)
    ends[torch.tensor(lengths).cumsum(0)[[z[-1] == tok.eos_token_id for _, z in kept]] - 1] = True
    return {"lengths": lengths, "end": ends,
            "row": torch.repeat_interleave(torch.arange(len(kept)), torch.tensor(lengths)),
            "at": torch.cat([torch.arange(L) for L in lengths]),
            "cls": torch.cat([token_classes(tok.batch_decode([[x] for x in z]), markers) for _, z in kept])}


def summarise(pos: dict, where: dict, t: Thresholds) -> dict:
    """Class, decile, uncertainty and end-of-rationale statistics over the kept rationales' positions."""
    lengths = where["lengths"]
    n = sum(lengths)
    if n == 0:
        return {"kept": {"rationales": 0, "positions": 0}, "by_class": {c: {"n": 0} for c in (*CLASSES, "all")},
                "by_decile": [], "kl_share": dict.fromkeys(CLASSES), "sequence_kl_mean": None,
                "uncertainty": dict.fromkeys(("uncertain_frac", "uncertain_frac_rest", "moved_frac", "moved_frac_rest")),
                "misleading": {"eos_ratio": None, "eos_q_lower_frac": None, "n_ends": 0}}
    cls, ends = where["cls"], where["end"]
    values = {"kl": pos["kl"], "abs_log_w": pos["log_w"].abs(), "w_own": pos["log_w"].exp(), "entropy": pos["entropy"],
              "tv": pos["tv"]}
    decile = relative_deciles(lengths)
    uncertain = pos["entropy"] > t.entropy
    moved = uncertain & (pos["tv"] > t.tv)
    rest = cls == 0
    eos_log_ratio = (pos["logq_eos"] - pos["logp_eos"])[ends]
    total_kl = pos["kl"].sum()
    return {
        "kept": {"rationales": len(lengths), "positions": n, **{f"{c}_positions": int((cls == k).sum())
                                                                 for k, c in enumerate(CLASSES)}},
        "by_class": {**{c: masked_means(values, cls == k) for k, c in enumerate(CLASSES)},
                     "all": masked_means(values, torch.ones(n, dtype=torch.bool))},
        "by_decile": [{"decile": d, **masked_means(values, decile == d)} for d in range(10)],
        "kl_share": {c: (pos["kl"][cls == k].sum() / total_kl).item() if total_kl > 0 else None
                     for k, c in enumerate(CLASSES)},
        "sequence_kl_mean": total_kl.item() / len(lengths),
        "uncertainty": {"uncertain_frac": uncertain.double().mean().item(),
                        "uncertain_frac_rest": uncertain[rest].double().mean().item() if rest.any() else None,
                        "moved_frac": moved.double().mean().item(),
                        "moved_frac_rest": moved[rest].double().mean().item() if rest.any() else None},
        "misleading": {"eos_ratio": eos_log_ratio.double().mean().exp().item() if len(eos_log_ratio) else None,
                       "eos_q_lower_frac": (eos_log_ratio < 0).double().mean().item() if len(eos_log_ratio) else None,
                       "n_ends": int(ends.sum())},
    }


def top_kl_positions(pos: dict, where: dict, kept, tok, problems, n: int = 10, context: int = 12) -> list[dict]:
    """The ``n`` positions of largest KL(q‖p): where the teacher disagrees most, with the text before them."""
    if not kept:
        return []
    out = []
    for j in pos["kl"].topk(min(n, len(pos["kl"]))).indices.tolist():
        i, z = kept[where["row"][j]]
        t = int(where["at"][j])
        out.append({"problem": problems[i].id, "answer": problems[i].answer, "position": t, "class": CLASSES[where["cls"][j]],
                    "before": tok.decode(z[max(0, t - context) : t]), "token": tok.decode([z[t]]),
                    "policy_top": tok.batch_decode([[v] for v in pos["top_ids"][j].tolist()]),
                    **{k: pos[k][j].item() for k in ("kl", "log_w", "entropy", "tv")}})
    return out


def prefix_check(cfg: Config, engine, grader, tok, problems, kept, pos: dict, where: dict, x_ids,
                 s: ProbeSettings, t: Thresholds) -> dict:
    """Posterior check: K distinct prefixes ending at uncertain "rest" positions of kept rationales (neither
    the answer nor its final value); from x ⊕ z<t ⊕ v, M continuations for each of the policy's top
    candidates v, graded; then ``posterior_check``."""
    if not kept or s.prefixes < 1 or s.rollouts < 1:
        return {"n_pairs": 0, "note": "no kept rationales" if not kept else "disabled"}
    row, at = where["row"], where["at"]
    pool = ((pos["entropy"] > t.entropy) & (where["cls"] == 0) & (at < cfg.rollout.max_new_tokens - 1)).nonzero().flatten()
    if len(pool) == 0:
        return {"n_pairs": 0, "note": f"no rest position with policy entropy > {t.entropy}"}
    g = torch.Generator().manual_seed(cfg.seed)
    chosen, seen = [], set()
    for j in pool[torch.randperm(len(pool), generator=g)].tolist():  # distinct prefixes x ⊕ z<t only
        i, z = kept[row[j]]
        if len(chosen) < s.prefixes and (key := (i, tuple(z[: at[j]]))) not in seen:
            seen.add(key)
            chosen.append(j)
    seed = cfg.seed * 1_000_003 + SEED_OFFSET + 20_000_000
    successes, details = [], []
    for k, j in enumerate(chosen):
        i, z = kept[row[j]]
        tt, cands = int(at[j]), pos["top_ids"][j].tolist()
        heads = [z[:tt] + [v] for v in cands]
        live = [h for h, v in zip(heads, cands) if v != tok.eos_token_id]  # after EOS nothing is generated
        outs = iter(engine.generate([x_ids[i] + h for h in live], n=s.rollouts, temperature=cfg.rollout.temperature,
                                    top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens - tt - 1,
                                    seed=seed + k * 100_000, logprobs=False)) if live else iter(())
        texts = [[tok.decode(h)] * s.rollouts if v == tok.eos_token_id else [tok.decode(h) + x.text for x in next(outs)]
                 for h, v in zip(heads, cands)]
        ok = [gr.correct for gr in grader.grade([(problems[i].answer, x) for ts in texts for x in ts])]
        counts = [sum(ok[c * s.rollouts : (c + 1) * s.rollouts]) for c in range(len(cands))]
        successes.append(counts)
        details.append({"problem": problems[i].id, "position": tt, "length": len(z), "entropy": pos["entropy"][j].item(),
                        "candidates": tok.batch_decode([[v] for v in cands]), "successes": counts})
    check = posterior_check(pos["top_logp"][chosen], pos["top_logq"][chosen], torch.tensor(successes), s.rollouts,
                            alpha=s.alpha, clip_max=cfg.intro.clip_max)
    for d, lw, lw_mc in zip(details, check.pop("log_w"), check.pop("log_w_mc")):
        d["log_w"], d["log_w_mc"] = lw, lw_mc
    return {**check, "prefixes": len(chosen), "uncertain_pool": len(pool), "smoothing": f"add-{s.alpha}", "details": details}
