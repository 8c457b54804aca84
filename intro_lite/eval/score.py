"""Sample k completions per problem with the rollout engine and grade them: the one scorer, used by
`intro-lite eval` and by training's held-out eval."""

from __future__ import annotations

from dataclasses import dataclass, field

from intro_lite.data.problems import Problem
from intro_lite.grading import extract_boxed
from intro_lite.rewards import problem_dict

STATUSES = ("ok", "timeout", "no_answer", "bad_gold", "error")  # the grader's; no_answer = empty answer


@dataclass
class Score:
    n_problems: int  # problems scored: all but those whose gold does not parse
    k: int
    accuracy: float  # mean over scored problems of the mean over k samples (pass@1 for k=1, avg@k otherwise)
    mean_length: float  # generated tokens per sample
    counts: dict[str, int] = field(default_factory=dict)  # grader statuses per sample (all of STATUSES)
    rows: list[dict] = field(default_factory=list)  # one per sample, for samples.jsonl
    n_bad_gold: int = 0  # problems not scored: their gold does not parse
    truncated: int = 0  # samples cut at max_new_tokens (or the model's context)
    maj_accuracy: float | None = None  # maj@k, if asked
    maj_timeouts: int = 0  # answer comparisons for maj@k that timed out (counted as "different answers")


def score(engine, grader, problems: list[Problem], prompt_ids: list[list[int]], *, k: int, temperature: float,
          top_p: float, max_new_tokens: int, seed: int, prompts: list[str] | None = None, maj: bool = False,
          chunk: int = 0, on_progress=None) -> Score:
    """Sample k completions per problem and grade them. `chunk` > 0 generates that many prompts per call
    (for progress); prompt i always uses seeds seed + i*k ... seed + i*k + k-1, chunked or not."""
    step = chunk or max(len(problems), 1)
    outs, grades = [], []
    for start in range(0, len(problems), step):
        part = engine.generate(prompt_ids[start : start + step], n=k, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, seed=seed + start * k)
        golds = [problem_dict(p) for p in problems[start : start + step]]  # a reward function gets the whole record
        grades += grader.grade([(gold, s.text) for gold, group in zip(golds, part) for s in group])
        outs += part
        if on_progress:
            on_progress(len(outs))
    counts = dict.fromkeys(STATUSES, 0)
    rows, per_problem, lengths, scored = [], [], [], []
    for pi, (p, group) in enumerate(zip(problems, outs)):
        gs = grades[pi * k : (pi + 1) * k]
        for j, (s, g) in enumerate(zip(group, gs)):
            counts[g.status] = counts.get(g.status, 0) + 1
            lengths.append(len(s.token_ids))
            rows.append({"id": p.id, "sample": j, "prompt": prompts[pi] if prompts else None, "completion": s.text,
                         "extracted": g.pred, "gold": p.answer, "correct": g.correct, "status": g.status,
                         "length": len(s.token_ids), "finish_reason": s.finish_reason})
        # A problem whose gold does not parse can't be scored: it is counted, not scored as wrong.
        if not all(g.status == "bad_gold" for g in gs):
            per_problem.append(sum(g.correct for g in gs) / len(gs))
            scored.append(pi)
    result = Score(
        n_problems=len(per_problem),
        k=k,
        accuracy=sum(per_problem) / max(len(per_problem), 1),
        mean_length=sum(lengths) / max(len(lengths), 1),
        counts=counts,
        rows=rows,
        n_bad_gold=len(problems) - len(per_problem),
        truncated=sum(s.finish_reason == "length" for group in outs for s in group),
    )
    if maj:
        wins, result.maj_timeouts = majority_correct(grader, [outs[i] for i in scored],
                                                     [grades[i * k : (i + 1) * k] for i in scored])
        result.maj_accuracy = sum(wins) / max(len(wins), 1)
    return result


def merge_scores(parts: list[Score]) -> Score:
    """One Score from the scores of consecutive shares of a problem list (the data-parallel eval's ranks):
    accuracy weighted by scored problems, mean length by samples, counts summed. Rows are concatenated;
    maj@k is not merged (training's eval does not ask for it)."""
    k = parts[0].k
    scored, samples = sum(p.n_problems for p in parts), sum((p.n_problems + p.n_bad_gold) * p.k for p in parts)
    counts = {name: sum(p.counts.get(name, 0) for p in parts) for name in {n for p in parts for n in p.counts}}
    return Score(n_problems=scored, k=k, accuracy=sum(p.accuracy * p.n_problems for p in parts) / max(scored, 1),
                 mean_length=sum(p.mean_length * (p.n_problems + p.n_bad_gold) * p.k for p in parts) / max(samples, 1),
                 counts={name: counts[name] for name in (*STATUSES, *sorted(set(counts) - set(STATUSES)))},
                 rows=[r for p in parts for r in p.rows], n_bad_gold=sum(p.n_bad_gold for p in parts),
                 truncated=sum(p.truncated for p in parts))


def majority_correct(grader, outs: list[list], grades: list[list]) -> tuple[list[bool], int]:
    """maj@k per problem: is the most frequent answer among the k samples the right one?

    Answers are grouped into equivalence classes with the grader, not by string: every correct sample
    is one class (they all equal the gold); wrong answers with the same extracted string are one class,
    and two such classes merge when the grader finds one's `\\boxed{}` answer (or, if unboxed, its
    extracted string) equal to the other's. Samples without an answer do not vote. Ties go to the
    class holding the earliest sample. Returns (per-problem wins, comparisons that timed out).
    """
    pending: list[tuple[int, list[tuple[str, int, int]]]] = []  # (problem, classes [(answer, size, first sample)])
    wins: list[bool | None] = []
    for pi, (group, gs) in enumerate(zip(outs, grades)):
        right = [j for j, g in enumerate(gs) if g.correct]
        wrong: dict[str, list[int]] = {}
        for j, g in enumerate(gs):
            if not g.correct and g.status == "ok" and g.pred:
                wrong.setdefault(g.pred, []).append(j)
        if not right or len(right) > sum(map(len, wrong.values())):
            wins.append(bool(right))  # decided without comparing answers
            continue
        wins.append(None)
        # The right class goes last, so pairs of wrong classes are those below index len - 1.
        keys = [(extract_boxed(group[m[0]].text) or pred).strip() for pred, m in wrong.items()]
        pending.append((pi, [(key, len(m), m[0]) for key, m in zip(keys, wrong.values())]
                        + [("", len(right), right[0])]))
    classes = dict(pending)
    # One grader call for every pair of wrong classes of every undecided problem.
    pairs = [(pi, a, b) for pi, cls in pending for a in range(len(cls) - 1) for b in range(a + 1, len(cls) - 1)]
    items = [(classes[pi][a][0], f"\\boxed{{{classes[pi][b][0]}}}") for pi, a, b in pairs]
    equal = grader.grade(items) if items else []
    merges: dict[int, list[tuple[int, int]]] = {}
    for (pi, a, b), g in zip(pairs, equal):
        if g.correct:
            merges.setdefault(pi, []).append((a, b))
    for pi, cls in pending:
        root = list(range(len(cls)))  # class -> its merged class; the right class (last) is never merged
        for a, b in merges.get(pi, []):
            ra, rb = root[a], root[b]
            root = [ra if r == rb else r for r in root]
        size = {r: sum(n for (_, n, _), q in zip(cls, root) if q == r) for r in set(root)}
        first = {r: min(j for (_, _, j), q in zip(cls, root) if q == r) for r in set(root)}
        wins[pi] = min(size, key=lambda r: (-size[r], first[r])) == len(cls) - 1
    return [bool(w) for w in wins], sum(g.status == "timeout" for g in equal)
