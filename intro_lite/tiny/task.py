"""The synthetic task: MATH-like multi-step arithmetic whose solutions come in a concise and a verbose
style (same reasoning, very different length), and the SFT warm-up examples made from it."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intro_lite.config.schema import DataConfig
from intro_lite.tiny.splits import unique_splits

# The trainer's default templates, taken from its config so the two can never drift apart:
# x (no chat template) and x ⊕ y (the answer-hint prompt InTRO's teacher reads).
PROMPT_TEMPLATE = DataConfig().prompt_template
HINT_TEMPLATE = DataConfig().hint_template

_OPS = ("add", "sub", "mul")
_OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
_PROBLEM_PHRASE = {"add": "Add {b}.", "sub": "Subtract {b}.", "mul": "Multiply by {b}."}
_VERBOSE_PHRASE = {
    "add": "we add {b} to {a}, which gives {c}.",
    "sub": "we subtract {b} from {a}, which gives {c}.",
    "mul": "we multiply {a} by {b}, which gives {c}.",
}
_PROBLEM_RE = re.compile(r"(Add|Subtract|Multiply by) (\d+)\.")
_PROBLEM_WORD_TO_OP = {"Add": "add", "Subtract": "sub", "Multiply by": "mul"}


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs of the synthetic task (all values stay non-negative integers).

    The defaults were tuned with the default warm-up to land near 30% test accuracy.
    With results capped at 99 the tiny model went from ~20% after a 700-step warm-up to
    ~90% after 800 steps: a phase change far too brittle to aim at. With up to 3-digit
    results, carries keep per-step accuracy improving slowly, so accuracy after a fixed
    budget is stable and falls with the number of operations (Level 2 > 3 > 4).
    """

    seed: int = 0
    n_train: int = 20000
    n_test: int = 200
    min_ops: int = 2
    max_ops: int = 4
    max_start: int = 9  # start value drawn from 1..max_start
    max_operand: int = 49  # add/sub operands drawn from 1..max_operand
    max_value: int = 499  # no intermediate result may exceed this
    max_mul_input: int = 49  # only multiply values up to this (2-digit x 1-digit)
    max_multiplier: int = 9  # multipliers drawn from 2..max_multiplier
    # "arith": the multi-step arithmetic above (the dial's "no signal" end: docs/tiny.md);
    # "choice": intro_lite.tiny.choice, a branch decision the warm-up leaves uncertain, where
    # wrong_rate is the warm-up demos' wrong-branch rate and reveal (the dial) the share of
    # problems whose answer y shows the branch.
    kind: str = "arith"
    wrong_rate: float = 0.5
    reveal: float = 1.0
    # The choice task's warm-up demos: shares of the (concise, verbose, backtracking) styles of
    # intro_lite.tiny.choice.STYLES, drawn independently of the branch and of the hint.
    styles: tuple[float, float, float] = (1.0, 0.0, 0.0)


@dataclass(frozen=True)
class ArithProblem:
    start: int
    steps: tuple[tuple[str, int], ...]  # (op, operand) pairs, applied left to right

    def values(self) -> list[int]:
        """Intermediate values, starting value first, final answer last."""
        out = [self.start]
        for op, b in self.steps:
            out.append(apply_op(out[-1], op, b))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]


def apply_op(a: int, op: str, b: int) -> int:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    raise ValueError(f"unknown op {op!r}")


def sample_problem(rng: random.Random, cfg: TaskConfig) -> ArithProblem:
    start = value = rng.randint(1, cfg.max_start)
    steps: list[tuple[str, int]] = []
    for _ in range(rng.randint(cfg.min_ops, cfg.max_ops)):
        # Draw the op first (uniform over the ops that can be legal here) so that the op
        # mix stays balanced, then an operand that keeps the value in [0, max_value].
        candidates = []
        if value + 1 <= cfg.max_value:
            candidates.append("add")
        if value >= 1:
            candidates.append("sub")
        if 1 <= value <= cfg.max_mul_input and value * 2 <= cfg.max_value:
            candidates.append("mul")
        op = rng.choice(candidates)
        if op == "add":
            b = rng.randint(1, min(cfg.max_operand, cfg.max_value - value))
        elif op == "sub":
            b = rng.randint(1, min(cfg.max_operand, value))
        else:
            b = rng.randint(2, min(cfg.max_multiplier, cfg.max_value // value))
        steps.append((op, b))
        value = apply_op(value, op, b)
    return ArithProblem(start, tuple(steps))


def format_problem(p: ArithProblem) -> str:
    ops = " ".join(_PROBLEM_PHRASE[op].format(b=b) for op, b in p.steps)
    return f"Start with {p.start}. {ops} What is the result?"


def parse_problem(text: str) -> ArithProblem:
    """Inverse of ``format_problem``; lets tests recompute answers from the problem text."""
    m = re.match(r"Start with (\d+)\. ", text)
    if not m:
        raise ValueError(f"not a tiny problem: {text!r}")
    steps = tuple((_PROBLEM_WORD_TO_OP[w], int(b)) for w, b in _PROBLEM_RE.findall(text))
    return ArithProblem(int(m.group(1)), steps)


def format_solution(p: ArithProblem, style: str) -> str:
    values = p.values()
    if style == "concise":
        lines = [
            f"{values[i]}{_OP_SYMBOL[op]}{b}={values[i + 1]}." for i, (op, b) in enumerate(p.steps)
        ]
        body = " ".join(lines)
    elif style == "verbose":
        n = len(p.steps)
        parts = [f"We start with {p.start}."]
        for i, (op, b) in enumerate(p.steps):
            lead = "First," if i == 0 else ("Finally," if i == n - 1 else "Next,")
            parts.append(f"{lead} " + _VERBOSE_PHRASE[op].format(a=values[i], b=b, c=values[i + 1]))
        parts.append(f"So the result is {values[-1]}.")
        body = " ".join(parts)
    else:
        raise ValueError(f"unknown style {style!r}")
    return f"{body} The answer is \\boxed{{{values[-1]}}}."


def make_record(p: ArithProblem, style: str, split: str, index: int) -> dict[str, str]:
    return {
        "problem": format_problem(p),
        "solution": format_solution(p, style),
        "answer": str(p.answer),
        "level": f"Level {len(p.steps)}",  # level = number of chained operations
        "unique_id": f"tiny/{split}/{index}",
        "style": style,
    }


def generate_records(cfg: TaskConfig) -> dict[str, list[dict[str, str]]]:
    """Deterministic ``{"train": [...], "test": [...]}``; no test problem appears in train.

    The test split is drawn first and its problem texts are excluded from train, so
    changing ``n_train`` never changes the test split.
    """
    if cfg.kind == "choice":
        from intro_lite.tiny.choice import generate_choice_records

        return generate_choice_records(cfg)
    if cfg.kind != "arith":
        raise ValueError(f"unknown task kind {cfg.kind!r}; choose arith or choice")
    rng = random.Random(cfg.seed)

    def draw():
        p = sample_problem(rng, cfg)
        # A fair coin per record, drawn only for a new problem: both splits are ~50/50 concise/verbose,
        # and the style is independent of the problem.
        return format_problem(p), lambda split, i: make_record(p, "concise" if rng.random() < 0.5 else "verbose", split, i)

    return unique_splits(draw, n_test=cfg.n_test, n_train=cfg.n_train)


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def format_prompt(problem: str) -> str:
    return PROMPT_TEMPLATE.replace("{question}", problem)


def format_hint_prompt(problem: str, answer: str) -> str:
    """x ⊕ y, rendered as the trainer renders it (``intro_lite.data.render_prompt``)."""
    return HINT_TEMPLATE.replace("{question}", problem).replace("{answer}", answer)


def warmup_examples(
    records: Sequence[dict[str, Any]], *, hint_fraction: float, seed: int
) -> list[dict[str, Any]]:
    """The SFT warm-up data: one ``{"prompt", "solution", "hinted", "style"}`` per record.

    Within each style, exactly ``round(hint_fraction * n_style)`` records (a seeded random
    choice) get the answer-hint prompt ``format_hint_prompt(problem, answer)``; the rest
    keep the plain prompt. Stratifying by style keeps both groups at the records' style mix
    (~50/50), so the hint never predicts the style. The target is the record's own solution,
    or its ``warmup_solution`` if it has one (the choice task's demo, whose hint shows the
    demo's own ``warmup_answer``); only it (plus eos) is trained on.
    """
    if not 0.0 <= hint_fraction <= 1.0:
        raise ValueError(f"hint_fraction must be in [0, 1], got {hint_fraction}")
    rng = random.Random(f"tiny-hint-{seed}")  # independent of the batch-order stream
    hinted: set[int] = set()
    for style in sorted({str(r.get("style")) for r in records}):
        idx = [i for i, r in enumerate(records) if str(r.get("style")) == style]
        hinted.update(rng.sample(idx, round(hint_fraction * len(idx))))
    return [
        {
            "prompt": format_hint_prompt(r["problem"], str(r.get("warmup_answer", r["answer"])))
            if i in hinted
            else format_prompt(r["problem"]),
            "solution": r.get("warmup_solution", r["solution"]),
            "hinted": i in hinted,
            "style": r.get("style"),
        }
        for i, r in enumerate(records)
    ]
