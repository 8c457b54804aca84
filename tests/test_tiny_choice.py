"""The tiny choice task (intro_lite.tiny_choice): the branch rate of the warm-up and the dial."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest

from intro_lite import tiny
from intro_lite.grading import extract_boxed
from intro_lite.tiny import TaskConfig, generate_records, warmup_examples
from intro_lite.tiny.choice import branch_of

N = 4000


def _records(**kw):
    return generate_records(TaskConfig(kind="choice", n_train=N, n_test=500, **kw))


def _parse(problem: str) -> tuple[dict[str, int], str, int]:
    m = re.fullmatch(r"Let a = (\d+) and b = (\d+)\. What is ([ab]) \+ (\d+)\?", problem)
    assert m, problem
    return {"a": int(m[1]), "b": int(m[2])}, m[3], int(m[4])


@pytest.mark.parametrize("reveal", [0.0, 1.0])
def test_gold_is_the_right_branch_and_demos_take_the_wrong_one_at_wrong_rate(reveal):
    records = _records(reveal=reveal, wrong_rate=0.4)
    for split in ("train", "test"):
        for r in records[split]:
            values, asked, k = _parse(r["problem"])
            other = "b" if asked == "a" else "a"
            assert r["answer"] == str(values[asked] + k) == extract_boxed(r["solution"])
            assert branch_of(r["problem"], r["solution"]) == "right"
            demo_branch = branch_of(r["problem"], r["warmup_solution"])
            assert demo_branch == r["style"]
            want = values[asked if demo_branch == "right" else other] + k
            assert r["warmup_answer"] == str(want) == extract_boxed(r["warmup_solution"])
    # The wrong-branch rate of the warm-up demos is wrong_rate (binomial, 4 SE), in both the
    # plain and the hinted half, and hinted demos show their own (possibly wrong) answer.
    examples = warmup_examples(records["train"], hint_fraction=0.5, seed=0)
    for hinted in (False, True):
        group = [(ex, r) for ex, r in zip(examples, records["train"]) if ex["hinted"] == hinted]
        rate = sum(branch_of(r["problem"], ex["solution"]) == "wrong" for ex, r in group) / len(group)
        assert abs(rate - 0.4) < 4 * math.sqrt(0.4 * 0.6 / len(group)), rate
    for ex, r in zip(examples, records["train"]):
        assert ex["solution"] == r["warmup_solution"]
        if ex["hinted"]:
            assert f"The final answer is {r['warmup_answer']}." in ex["prompt"]
        else:
            assert ex["prompt"] == tiny.format_prompt(r["problem"])


def test_informative_end_separates_the_two_branches_by_digit_count():
    for r in _records(reveal=1.0)["train"]:
        values, asked, k = _parse(r["problem"])
        other = "b" if asked == "a" else "a"
        assert 20 <= values[asked] + k <= 99 and 100 <= values[other] + k <= 178
        assert r["regime"] == "separated"


def test_blind_end_draws_both_branches_results_from_the_same_distribution():
    right, wrong = [], []
    for r in _records(reveal=0.0)["train"]:
        values, asked, k = _parse(r["problem"])
        other = "b" if asked == "a" else "a"
        right.append(values[asked] + k)
        wrong.append(values[other] + k)
        assert r["regime"] == "same"
    assert all(20 <= v <= 99 for v in right + wrong)  # same digit count
    # Same distribution: equal means within 4 SE, and leading digits with the same frequencies.
    mean = lambda xs: sum(xs) / len(xs)
    sd = math.sqrt(mean([(v - mean(right)) ** 2 for v in right]))
    assert abs(mean(right) - mean(wrong)) < 4 * sd * math.sqrt(2 / N)
    lead_r, lead_w = Counter(v // 10 for v in right), Counter(v // 10 for v in wrong)
    for d in range(2, 10):
        assert abs(lead_r[d] - lead_w[d]) / N < 0.03, d


def test_dial_sets_the_share_of_separated_problems():
    records = _records(reveal=0.5)["train"]
    share = sum(r["regime"] == "separated" for r in records) / len(records)
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / len(records))


def test_deterministic_disjoint_and_validated():
    records = _records(reveal=1.0)
    assert records == _records(reveal=1.0)
    assert not {r["problem"] for r in records["test"]} & {r["problem"] for r in records["train"]}
    assert len({r["problem"] for r in records["train"]}) == N
    with pytest.raises(ValueError, match="reveal"):
        _records(reveal=1.5)
    with pytest.raises(ValueError, match="unknown task kind"):
        generate_records(TaskConfig(kind="nope"))


def test_branch_of():
    p = "Let a = 12 and b = 40. What is b + 17?"
    assert branch_of(p, "Use b = 40. 40+17=57.") == "right"
    assert branch_of(p, "Use a = 12. 12+17=29.") == "wrong"
    assert branch_of(p, "40+17=57.") is None


def test_presets_are_the_two_ends_of_the_dial_with_1000_test_problems():
    choice, blind = tiny.PRESETS["choice"], tiny.PRESETS["choice_blind"]
    assert (choice.task.kind, choice.task.reveal, blind.task.reveal) == ("choice", 1.0, 0.0)
    assert choice.task.n_test >= 1000 and blind.task.n_test >= 1000
    assert len({choice.fingerprint(), blind.fingerprint(), tiny.PRESETS["default"].fingerprint()}) == 3
    assert tiny.PRESETS["default"].task.kind == "arith"


# -- tiny-choice_styles: a length dimension on the choice task (issue 25) ------------------------------

from intro_lite.tiny.choice import STYLES, backtracks, format_solution, style_of  # noqa: E402

SHARES = (0.5, 0.3, 0.2)


def test_styles_write_the_same_branch_and_answer_at_three_lengths():
    texts = {s: format_solution("a", 23, 17, s, slip=-10) for s in STYLES}
    assert texts["concise"] == "Use a = 23. 23+17=40. The answer is \\boxed{40}."
    assert texts["backtrack"] == "Use a = 23. 23+17=30. Wait, 23+17=40. The answer is \\boxed{40}."
    p = "Let a = 23 and b = 61. What is a + 17?"
    for s, text in texts.items():
        assert extract_boxed(text) == "40" and branch_of(p, text) == "right" and style_of(text) == s
        assert backtracks(text) == (s == "backtrack")
    assert len(texts["concise"]) < len(texts["backtrack"]) < len(texts["verbose"])
    assert style_of("23+17=40.") is None


def test_styles_come_in_the_stated_shares_independent_of_branch_and_hint():
    records = _records(reveal=1.0, wrong_rate=0.5, styles=SHARES)["train"]
    examples = warmup_examples(records, hint_fraction=0.5, seed=0)
    for r, ex in zip(records, examples):
        branch, style = r["style"].split("-")
        assert style_of(r["warmup_solution"]) == style == r["writing_style"] and ex["solution"] == r["warmup_solution"]
        assert branch_of(r["problem"], r["warmup_solution"]) == branch
        assert extract_boxed(r["warmup_solution"]) == r["warmup_answer"]
        assert style_of(r["solution"]) == "concise"  # the gold (SFT's target) stays concise
    # Each style's share within every (branch, hinted) cell is its stated share: binomial, 4 SE.
    for branch in ("right", "wrong"):
        for hinted in (False, True):
            cell = [r for r, ex in zip(records, examples) if r["style"].startswith(branch) and ex["hinted"] == hinted]
            for style, share in zip(STYLES, SHARES):
                got = sum(r["writing_style"] == style for r in cell) / len(cell)
                assert abs(got - share) < 4 * math.sqrt(share * (1 - share) / len(cell)), (branch, hinted, style, got)


def test_styles_leave_the_plain_choice_task_as_it_was():
    plain, styled = _records(reveal=1.0), _records(reveal=1.0, styles=SHARES)
    keep = ("problem", "solution", "answer", "unique_id", "regime", "warmup_answer")
    assert [{k: r[k] for k in keep} for r in plain["train"]] == [{k: r[k] for k in keep} for r in styled["train"]]
    assert all("writing_style" not in r and style_of(r["warmup_solution"]) == "concise" for r in plain["train"])
    # The existing presets' cache keys (sha256 of their parameters, the cache dirs' names before `styles`
    # existed) do not see the new field; the new preset gets its own.
    assert {n: tiny.PRESETS[n].fingerprint() for n in ("default", "choice", "choice_blind")} == {
        "default": "88dbf85df11a", "choice": "ac963b67fc45", "choice_blind": "764b16609893"}
    assert tiny.PRESETS["choice_styles"].fingerprint() not in {p.fingerprint() for n, p in tiny.PRESETS.items()
                                                               if n != "choice_styles"}
    with pytest.raises(ValueError, match="styles"):
        _records(styles=(0.5, 0.5, 0.5))
