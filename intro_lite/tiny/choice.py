"""The tiny "choice" task: easy arithmetic after a branch decision the warm-up leaves uncertain.

Why it exists (docs/tiny.md): on the arithmetic task no method learns, because the tiny
policy's errors are arithmetic slips and the answer hint x ⊕ y only confirms final digits.
InTRO's weight is w = q/p ≈ P(y | z<t, v) / P(y | z<t): it can only help where the policy is
unsure about a choice that matters and y tells which choice is right. This task has exactly
one such choice, and a dial for how much y reveals it:

    problem   "Let a = 23 and b = 61. What is a + 17?"
    right     "Use a = 23. 23+17=40. The answer is \\boxed{40}."
    wrong     "Use b = 61. 61+17=78. The answer is \\boxed{78}."   (the other variable)

- The branch is the variable token after "Use". The gold ``solution`` (what SFT trains on and
  what grading uses) always takes the right branch. The warm-up demo (``warmup_solution``)
  takes the wrong branch with probability ``wrong_rate`` and carries its own wrong answer
  (``warmup_answer``), so after the warm-up the policy picks the branch at about that rate,
  whatever the problem: reward can fix it by moving one token.
- ``reveal`` is the dial: the share of problems drawn in the *separated* regime, where the right
  branch's result has 2 digits (20-99) and the wrong one's 3 (100-178), so the number of digits
  of y names the branch. The rest are drawn in the *same* regime: both variables i.i.d., both
  results 2-digit and identically distributed, so y says nothing about the branch beyond
  what computing its last digits would. Hinted warm-up demos show the y of the branch they take,
  so the model learns to read the branch from y exactly where it is readable.
"""

from __future__ import annotations

import random
from typing import Any

from intro_lite.tiny.splits import unique_splits

VARS = ("a", "b")
# The warm-up demos' styles (TaskConfig.styles gives their shares), all with the same branch and answer:
#   concise    Use a = 23. 23+17=40. The answer is \boxed{40}.
#   verbose    Use a = 23. We add 17 to a, which is 23. 23+17=40. So a + 17 is 40. The answer is \boxed{40}.
#   backtrack  Use a = 23. 23+17=41. Wait, 23+17=40. The answer is \boxed{40}.
STYLES = ("concise", "verbose", "backtrack")
BACKTRACK_MARKER = "Wait,"


def sample_values(rng: random.Random, separated: bool) -> tuple[int, int, int]:
    """``(asked value, other value, k)``: asked + k is the right result, other + k the wrong one."""
    if separated:  # right result 20..99, wrong result 100..178: the digit count tells them apart
        k = rng.randint(11, 89)
        return rng.randint(10, 99 - k), rng.randint(100 - k, 89), k
    k = rng.randint(10, 79)  # both results 20..99, the two values i.i.d.: y's size tells nothing
    return rng.randint(10, 99 - k), rng.randint(10, 99 - k), k


def format_solution(var: str, value: int, k: int, style: str = "concise", slip: int = 1) -> str:
    """A rationale in `style`; `slip` is the backtracking style's error in its first sum."""
    total = value + k
    answer = f"The answer is \\boxed{{{total}}}."
    if style == "concise":
        return f"Use {var} = {value}. {value}+{k}={total}. {answer}"
    if style == "verbose":
        return f"Use {var} = {value}. We add {k} to {var}, which is {value}. {value}+{k}={total}. So {var} + {k} is {total}. {answer}"
    if style == "backtrack":
        return f"Use {var} = {value}. {value}+{k}={total + slip}. {BACKTRACK_MARKER} {value}+{k}={total}. {answer}"
    raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")


def style_of(rationale: str) -> str | None:
    """The style a rationale is written in (backtracking wins over verbose), None if it is none of them."""
    if BACKTRACK_MARKER in rationale:
        return "backtrack"
    if " We add " in rationale:
        return "verbose"
    return "concise" if rationale.lstrip().startswith("Use ") else None


def backtracks(rationale: str) -> int:
    """How many times a rationale takes a step back (the backtracking style's marker)."""
    return rationale.count(BACKTRACK_MARKER)


def generate_choice_records(cfg: Any) -> dict[str, list[dict[str, str]]]:
    """Deterministic ``{"train", "test"}`` records for ``TaskConfig(kind="choice")``; test drawn first, disjoint."""
    if not 0.0 <= cfg.wrong_rate <= 1.0 or not 0.0 <= cfg.reveal <= 1.0:
        raise ValueError(f"wrong_rate and reveal must be in [0, 1], got {cfg.wrong_rate}, {cfg.reveal}")
    rng = random.Random(f"tiny-choice-{cfg.seed}")
    styled = tuple(cfg.styles) != (1.0, 0.0, 0.0)
    if len(cfg.styles) != len(STYLES) or min(cfg.styles) < 0 or abs(sum(cfg.styles) - 1) > 1e-9:
        raise ValueError(f"styles must be {len(STYLES)} shares of {STYLES} summing to 1, got {cfg.styles}")
    # Its own stream: the default (all concise) draws nothing, so tiny-choice's records stay as they were.
    style_rng = random.Random(f"tiny-choice-styles-{cfg.seed}")

    def draw():
        separated = rng.random() < cfg.reveal
        asked_value, other_value, k = sample_values(rng, separated)
        asked = rng.choice(VARS)  # which variable the question asks about
        other = VARS[1 - VARS.index(asked)]
        values = {asked: asked_value, other: other_value}
        problem = f"Let a = {values['a']} and b = {values['b']}. What is {asked} + {k}?"

        def make(split: str, index: int) -> dict[str, str]:
            wrong = rng.random() < cfg.wrong_rate  # the warm-up demo's branch, independent of the problem
            demo_var = other if wrong else asked
            branch = "wrong" if wrong else "right"
            record = {
                "problem": problem,
                "solution": format_solution(asked, asked_value, k),
                "answer": str(asked_value + k),
                "level": "Level 1",
                "unique_id": f"tiny/{split}/{index}",
                # "style" is the warm-up demo's branch: warmup_examples stratifies the hinted
                # records by it, so being hinted never predicts the branch.
                "style": branch,
                "regime": "separated" if separated else "same",
                "warmup_solution": format_solution(demo_var, values[demo_var], k),
                "warmup_answer": str(values[demo_var] + k),
            }
            if styled:  # stratified by branch and writing style: the hint predicts neither
                style = style_rng.choices(STYLES, weights=cfg.styles)[0]
                slip = style_rng.choice((-10, -1, 1, 10))
                record.update(style=f"{branch}-{style}", writing_style=style,
                              warmup_solution=format_solution(demo_var, values[demo_var], k, style, slip))
            return record

        return problem, make

    return unique_splits(draw, n_test=cfg.n_test, n_train=cfg.n_train)


def branch_of(problem: str, rationale: str) -> str | None:
    """"right" / "wrong" for the variable a rationale uses (its first "Use <var>"), None if it names none."""
    asked = problem.rsplit("What is ", 1)[-1].split(" ", 1)[0]
    head = rationale.split("Use ", 1)
    if len(head) < 2 or not head[1][:1] in VARS:
        return None
    return "right" if head[1][:1] == asked else "wrong"
