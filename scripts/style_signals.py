"""Which writing style does each method's own per-token signal favour? (docs/results/toy-styles, rule 6)

    python scripts/style_signals.py [--adapter RUN/final] [--limit 64] [--out FILE.json]
    python scripts/style_signals.py --samples RUN [RUN ...]     # InTRO runs: w on their own rollouts

On `tiny-choice_styles` problems of the training split, writes the right-branch rationale of every
problem in each style (intro_lite.tiny.choice.format_solution: concise, verbose, backtracking; all
three correct, so their reward is equal and the outcome advantage of every reward-based method is the
same for them) and runs, on the start model (or the model with `--adapter`), the pieces of each method
that are not the outcome reward:

- InTRO: w = q/p per token, q with the hint x ⊕ y and p without, through the same weights (the teacher
  at step 0 for every teacher option; with `--adapter` the paper's teacher, the policy itself).
- IAPO: its token shaping λ_s ŝ − sign(r) λ_c ĉ (iapo_token_advantages, mode next_token, defaults),
  which is all that separates its advantage from GRPO's when the rewards tie.
- RePro: α·Ã_t, its process advantage (prefix scores J̃ of the gold answer at the sentence ends, as in
  the study, point scores, r̃ normalised within the group of the three styles, reverse cumsum).

Per style: tokens, log p(z | x) (how likely the model writes it), and each signal summed over the
rationale ("mass", what the surrogate's token sum pushes onto the sequence, in units of one token's
outcome advantage) and at the style's own token (where it leaves the concise rationale: " We" for
verbose, the slipped digit for backtracking; concise's own is the token verbose replaces). Means over
problems with their SE. Prints markdown; `--out` also writes the numbers as JSON.

`--samples` reads InTRO runs' samples.jsonl instead (the w of every trained rollout token, as `intro-lite
show` colours it) and gives the mean |log w| at three places of each rationale: the branch (the variable
after "Use"), the style (the token after the first sentence: " We" for verbose, " " before the sum
otherwise) and the first sum's result digits, beside the mean over all tokens."""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from functools import partial
from pathlib import Path

import torch

from intro_lite.config import load_config
from intro_lite.data.problems import PromptSampler, load_problems
from intro_lite.forward import suffix_logits
from intro_lite.io import write_atomic
from intro_lite.objectives.base import PassContext, Row
from intro_lite.objectives.iapo import iapo_token_advantages
from intro_lite.objectives.repro import (normalise_within_groups, prefix_scores, repro_point_scores, repro_process_rewards,
                                         reverse_cumsum)
from intro_lite.policy import load_policy
from intro_lite.tiny.assets import resolve_model_path
from intro_lite.tiny.choice import STYLES, format_solution
from intro_lite.train.loop import tokenize_problems

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny.toml"
SETS = ["model.name_or_path=tiny-choice_styles", "model.quantization=none", "data.source=tiny-choice_styles",
        'repro.boundary_markers=["."]']
PROBLEM = re.compile(r"Let a = (\d+) and b = (\d+)\. What is ([ab]) \+ (\d+)\?")


def rationales(question: str, slip: int) -> dict[str, str]:
    a, b, var, k = PROBLEM.match(question).groups()
    value = int(a) if var == "a" else int(b)
    return {s: format_solution(var, value, int(k), s, slip) for s in STYLES}


def own_token(ids: dict[str, list[int]]) -> dict[str, int]:
    """The position where each style leaves the concise rationale (concise: where verbose leaves it)."""
    def split(u: list[int], v: list[int]) -> int:
        return next(i for i, (x, y) in enumerate(zip(u, v)) if x != y)
    return {"concise": split(ids["concise"], ids["verbose"]), "verbose": split(ids["verbose"], ids["concise"]),
            "backtrack": split(ids["backtrack"], ids["concise"])}


def mean_se(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs))


def places(tokens: list[str]) -> dict[str, list[int]] | None:
    """Token positions of the branch, the style decision and the first sum's result in a rollout, None if
    it is not of the task's shape ("Use v = N. [We ...] A+B=R. ...")."""
    text, ends = "", []
    for t in tokens:
        text += t
        ends.append(len(text))
    first = next((i for i, t in enumerate(tokens) if "." in t), None)
    eq = text.find("=", text.find("+"))
    if first is None or first + 1 >= len(tokens) or len(tokens) < 2 or eq < 0:
        return None
    if " We" in tokens[first + 1]:  # verbose: the result is that of the sum after "which is N."
        eq = text.find("=", text.find("+", text.find("which is")))
    stop = text.find(".", eq)
    result = [i for i, e in enumerate(ends) if eq < e - 1 < stop and tokens[i].strip().isdigit()]
    return {"branch": [1], "style": [first + 1], "result": result}


def from_samples(runs: list[Path]) -> None:
    acc: dict[str, list[float]] = {"all tokens": [], "branch": [], "style": [], "result": []}
    for run in runs:
        for line in (run / "samples.jsonl").read_text().splitlines():
            r = json.loads(line) if line.strip() else {}
            if not r.get("w") or not (at := places(r["tokens"])):
                continue
            logw = [abs(math.log(max(w, 1e-12))) for w in r["w"]]
            acc["all tokens"].append(statistics.fmean(logw))
            for name, idx in at.items():
                acc[name].extend(logw[i] for i in idx)
    print(f"InTRO's w on its own trained rollouts ({len(acc['all tokens'])} rationales of {len(runs)} runs)\n")
    print("| place | tokens | mean abs(log w) |\n|---|---|---|")
    for name, xs in acc.items():
        print(f"| {name} | {len(xs)} | " + ("%.4f ± %.4f" % mean_se(xs) if len(xs) > 1 else "–") + " |")


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", help="a trained LoRA adapter dir (default: the start model)")
    ap.add_argument("--limit", type=int, default=64, help="problems of the training split")
    ap.add_argument("--out", type=Path, help="also write the numbers here (JSON)")
    ap.add_argument("--samples", type=Path, nargs="+", help="InTRO run dirs: w on their own rollouts instead")
    args = ap.parse_args()
    if args.samples:
        return from_samples(args.samples)
    sets = SETS + ([f"lora.init_adapter={args.adapter}"] if args.adapter else [])
    cfg = load_config(RECIPE, sets)
    model, tok = load_policy(cfg, resolve_model_path(cfg.model.name_or_path))
    model.eval()
    problems, x_ids, xy_ids = tokenize_problems(cfg, tok, load_problems(cfg.data))
    logits_fn = partial(suffix_logits, model, pad_id=tok.pad_token_id)
    ctx = PassContext(tokenizer=tok, problems=problems, logits=logits_fn)
    iapo, repro = cfg.iapo, cfg.repro  # the typed settings the study's cells ran with
    rows: dict[str, dict[str, list[float]]] = {s: {} for s in STYLES}

    def add(style: str, key: str, value: float) -> None:
        rows[style].setdefault(key, []).append(value)

    for n, i in enumerate(PromptSampler(len(problems), cfg.seed).next(min(args.limit, len(problems)))):
        texts = rationales(problems[i].question, slip=(-10, -1, 1, 10)[n % 4])
        ids = {s: tok(z, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for s, z in texts.items()}
        zs = [ids[s] for s in STYLES]
        plain, tokens, mask = logits_fn([x_ids[i]] * 3, zs)
        hinted, _, _ = logits_fn([xy_ids[i]] * 3, zs)
        logp = torch.log_softmax(plain, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1) * mask
        logq = torch.log_softmax(hinted, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1) * mask
        m = mask.bool()
        entropy = -(torch.softmax(plain, -1) * torch.log_softmax(plain, -1)).sum(-1) * mask
        ones, group = torch.ones(3), torch.zeros(3, dtype=torch.long)
        shaping, *_ = iapo_token_advantages(ones, group, entropy, m, lambda_s=iapo.lambda_s, lambda_c=iapo.lambda_c,
                                            std_eps=iapo.std_eps)  # equal rewards: the outcome part is 0
        chunk = [Row(i, 0, x_ids[i], xy_ids[i], z, len(z), 1.0) for z in zs]
        positions, scores = prefix_scores(chunk, ctx, repro, plain, mask)
        valid = positions >= 0
        s, *_ = repro_point_scores(scores, valid, w=repro.w)
        raw, holds = repro_process_rewards(positions.masked_fill(~valid, 0), s, valid, tokens.shape[1])
        process = repro.alpha * reverse_cumsum(normalise_within_groups(raw, holds & m, group, eps=repro.std_eps), m)
        at = own_token(ids)
        for b, style in enumerate(STYLES):
            n_tok, t = int(mask[b].sum()), at[style]
            log_w = (logq[b] - logp[b])[: n_tok]
            add(style, "tokens", n_tok)
            add(style, "log p(z|x)", float(logp[b].sum()))
            add(style, "p(own token)", float(logp[b, t].exp()))
            add(style, "InTRO log w, sum", float(log_w.sum()))
            add(style, "InTRO log w, own token", float(log_w[t]))
            add(style, "IAPO shaping, mass", float(shaping[b].sum()))
            add(style, "IAPO shaping, own token", float(shaping[b, t]))
            add(style, "RePro α·Ã, mass", float(process[b].sum()))
            add(style, "RePro α·Ã, own token", float(process[b, t]))
            add(style, "RePro J̃ drop (min − start)", float(scores[b][valid[b]].min() - scores[b, 0]))
    keys = list(rows[STYLES[0]])
    print(f"{args.limit} problems, right branch, all three styles correct; model: {args.adapter or 'start (tiny-choice_styles)'}\n")
    print("| quantity | " + " | ".join(STYLES) + " |\n|---|" + "---|" * len(STYLES))
    summary = {k: {s: mean_se(rows[s][k]) for s in STYLES} for k in keys}
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{m:.4g} ± {se:.2g}" for m, se in summary[k].values()) + " |")
    if args.out:
        write_atomic(args.out, json.dumps({"adapter": args.adapter, "limit": args.limit, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
