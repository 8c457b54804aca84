"""samples.jsonl: every `log.samples_every` steps, what the model did — each rollout's prompt,
completion, grade and reward and, for the rows the objective trained, each token's captured values
(InTRO: w and log q/p of the rationale's own token). `intro-lite show` renders it (intro_lite/show.py)."""

from __future__ import annotations

from intro_lite.io import append_jsonl


def is_sample_step(cfg, step: int) -> bool:
    every = cfg.log.samples_every
    return every > 0 and (step % every == 0 or step == 1)


def token_values(rows, captured: list[dict] | None) -> dict[int, dict]:
    """Row index -> {name: [value per token]}; the capture holds one entry per micro-batch, in row order."""
    out, i = {}, 0
    for part in captured or []:
        names = list(part)
        n = len(part[names[0]]) if names else 0
        for j in range(n):
            out[i + j] = {k: part[k][j] for k in names}
        i += n
    return out if i == len(rows) else {}  # an objective that captured for other rows than the loop's: none


def write_samples(path, step: int, problems, tokenizer, rolled, rows, captured: list[dict] | None) -> None:
    """One line per rollout of the step (or per trained row when nothing was rolled out)."""
    values = token_values(rows, captured)
    by_suffix = {(r.prompt, tuple(r.suffix)): values.get(k) for k, r in enumerate(rows)}
    items = ([(i, s.token_ids, s.text, g) for (i, s), g in zip(rolled.pairs, rolled.grades)] if rolled is not None
             else [(r.prompt, r.suffix, tokenizer.decode(r.suffix), None) for r in rows])
    for n, (i, ids, text, grade) in enumerate(items):
        ids = list(ids)
        p = problems[i]
        values_for = by_suffix.get((i, tuple(ids)))
        tokens = [tokenizer.decode([t]) for t in ids] if values_for else None
        append_jsonl(path, {
            "step": step, "index": n, "problem_id": p.id, "prompt": p.question, "answer": p.answer,
            "completion": text, "correct": grade.correct if grade else None, "status": grade.status if grade else None,
            "reward": grade.value if grade else None, "trained": (i, tuple(ids)) in by_suffix,
            "tokens": tokens, **(values_for or {}),
        })
