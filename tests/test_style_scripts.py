"""The toy-styles study's counting (scripts/style_counts.py) and probe helpers (scripts/style_signals.py):
what they count on hand-written rationales of the tiny-choice_styles task."""

import importlib.util
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PROMPT = "Let a = 23 and b = 61. What is a + 17?\n"


def test_measure_counts_styles_accuracy_within_style_and_branch():
    counts = load("style_counts")
    rows = [
        {"id": "p", "completion": "Use a = 23. 23+17=40. The answer is \\boxed{40}.", "correct": True, "length": 27},
        {"id": "p", "completion": "Use b = 61. 61+17=78. The answer is \\boxed{78}.", "correct": False, "length": 27},
        {"id": "p", "completion": "Use a = 23. We add 17 to a, which is 23. 23+17=40. So a + 17 is 40. The answer is "
                                  "\\boxed{40}.", "correct": True, "length": 52},
        {"id": "p", "completion": "Use a = 23. 23+17=41. Wait, 23+17=40. The answer is \\boxed{40}.", "correct": False,
         "length": 39},
    ]
    m = counts.measure(rows, {"p": PROMPT})
    assert m["accuracy"] == 50.0 and m["length"] == (27 + 27 + 52 + 39) / 4
    assert (m["concise"], m["verbose"], m["backtrack"], m["other"]) == (50.0, 25.0, 25.0, 0.0)
    assert m["backtracks"] == 0.25
    assert (m["accuracy of concise"], m["accuracy of verbose"], m["accuracy of backtrack"]) == (50.0, 100.0, 0.0)
    assert m["right branch"] == 75.0
    # Without the prompts the branch is unknown, not zero; a style nobody wrote has no accuracy.
    m = counts.measure(rows[:2])
    assert math.isnan(m["right branch"]) and math.isnan(m["accuracy of verbose"])


def test_rationales_and_the_token_where_each_style_is_chosen():
    signals = load("style_signals")
    z = signals.rationales(PROMPT.strip(), slip=10)
    assert z["concise"] == "Use a = 23. 23+17=40. The answer is \\boxed{40}."
    assert z["backtrack"].startswith("Use a = 23. 23+17=50. Wait, 23+17=40.")
    # Character "tokens": verbose leaves concise at " We" -> "W" after "Use a = 23. "; backtracking at the slip.
    ids = {s: list(t) for s, t in z.items()}
    at = signals.own_token(ids)
    assert z["verbose"][at["verbose"]] == "W" and z["concise"][at["concise"]] == "2"
    assert z["backtrack"][at["backtrack"]] == "5" and z["concise"][at["backtrack"]] == "4"


HEAD = ["Use", " a", " =", " ", "2", "3", "."]  # as the tiny tokenizer splits it: one digit a token
SUM = [" ", "2", "3", "+", "1", "7", "="]
TOKENS = {
    "concise": HEAD + SUM + ["4", "0", ".", " The", " answer"],
    "verbose": HEAD + [" We", " add", " ", "1", "7", " to", " a", ",", " which", " is", " ", "2", "3", "."] + SUM
               + ["4", "0", ".", " So"],
    "backtrack": HEAD + SUM + ["4", "1", ".", " Wait", ","] + SUM + ["4", "0", "."],
}


@pytest.mark.parametrize("style, result", [("concise", "40"), ("verbose", "40"), ("backtrack", "41")])
def test_places_finds_branch_style_and_the_first_sums_result(style, result):
    signals = load("style_signals")
    tokens = TOKENS[style]
    at = signals.places(tokens)
    assert at["branch"] == [1] and tokens[1] == " a"
    assert at["style"] == [7] and tokens[7] == (" We" if style == "verbose" else " ")
    assert "".join(tokens[i] for i in at["result"]) == result
    assert signals.places(["Use", " a"]) is None  # not of the task's shape
