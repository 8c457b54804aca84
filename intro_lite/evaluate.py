"""Score a model (+ adapter) on problems with the project's engine and grader: accuracy and length."""

from __future__ import annotations

from dataclasses import dataclass, field

from intro_lite.data import Problem


@dataclass
class Score:
    n_problems: int
    k: int
    accuracy: float  # mean over problems of the mean over k samples (pass@1 for k=1, avg@k otherwise)
    mean_length: float  # generated tokens per sample
    counts: dict[str, int] = field(default_factory=dict)  # grader statuses: ok / timeout / no_answer / bad_gold / error
    rows: list[dict] = field(default_factory=list)  # one per sample, for samples.jsonl


def score(engine, grader, problems: list[Problem], prompt_ids: list[list[int]], *, k: int, temperature: float,
          top_p: float, max_new_tokens: int, seed: int, prompts: list[str] | None = None) -> Score:
    outs = engine.generate(prompt_ids, n=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    pairs = [(p.answer, s.text) for p, group in zip(problems, outs) for s in group]
    grades = grader.grade(pairs)
    counts: dict[str, int] = {}
    rows, per_problem, lengths = [], [], []
    gi = 0
    for pi, (p, group) in enumerate(zip(problems, outs)):
        hits = []
        for s in group:
            g = grades[gi]
            gi += 1
            counts[g.status] = counts.get(g.status, 0) + 1
            lengths.append(len(s.token_ids))
            rows.append({"id": p.id, "prompt": prompts[pi] if prompts else None, "completion": s.text,
                         "extracted": g.pred, "gold": p.answer, "correct": g.correct, "status": g.status,
                         "length": len(s.token_ids)})
            hits.append(g.correct)
        # A problem whose gold does not parse can't be scored: it is counted, not scored as wrong.
        if not all(grades[gi - len(group) + j].status == "bad_gold" for j in range(len(group))):
            per_problem.append(sum(hits) / len(hits))
    return Score(
        n_problems=len(per_problem),
        k=k,
        accuracy=sum(per_problem) / max(len(per_problem), 1),
        mean_length=sum(lengths) / max(len(lengths), 1),
        counts=counts,
        rows=rows,
    )
