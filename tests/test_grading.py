"""Tests for intro_lite.grading (CPU only; a few seconds of worker start-ups and timeouts)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from intro_lite.grading import Grade, Grader, extract_boxed

# Reasoning long enough that math-verify does not read the two boxes as one
# multi-part answer (it joins boxes < 70 chars apart that are separated by
# ",", "and", "or").
_SELF_CORRECTION = (
    "So the answer is \\boxed{{{first}}}. Hmm, wait. Let me double-check the second "
    "step, because I think I dropped a factor of two when I expanded the square "
    "earlier on. Redoing that carefully gives \\boxed{{{last}}}."
)


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout_s=5.0) as g:
        yield g


def grade_one(grader: Grader, gold: str, completion: str) -> Grade:
    (result,) = grader.grade([(gold, completion)])
    return result


def _zombie_children() -> list[int]:
    """PIDs of zombie (exited but unreaped) children of this process."""
    zombies = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Format: pid (comm) state ppid ...; comm may contain spaces.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == me and state == "Z":
            zombies.append(int(entry))
    return zombies


# ---------------------------------------------------------------------------
# extract_boxed
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("x \\boxed{a^{b^{c}}} y", "a^{b^{c}}"),
        ("first \\boxed{1} then \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\fbox{7}", "7"),
        ("\\boxed{1} then \\fbox{2}", "2"),
        ("\\boxed {5}", "5"),
        # Escaped braces are literal, not grouping.
        ("\\boxed{\\left\\{ x > 0 \\right.}", "\\left\\{ x > 0 \\right."),
        # Truncated generation: the unterminated last box is skipped.
        ("\\boxed{3} and then \\boxed{\\frac{1}{2", "3"),
        ("no box here", None),
        ("\\boxed{", None),
        ("", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# ---------------------------------------------------------------------------
# Equivalence judgements
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gold, completion",
    [
        ("0.5", "The answer is \\boxed{\\frac{1}{2}}."),
        ("\\frac{1}{2}", "The answer is \\boxed{0.5}."),
        ("\\frac34", "\\boxed{\\dfrac{3}{4}}"),
        ("(1, 2]", "\\boxed{(1,2]}"),
        ("(3, \\frac{\\pi}{2})", "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"),
        ("27.0", "\\boxed{27}"),
        ("27", "\\boxed{27.0}"),
        ("70", "Adding up, the total is 70 apples."),  # no box: plain-number fallback
        ("$\\frac{1}{2}$", "\\boxed{0.5}"),  # gold wrapped in $...$
        ("\\frac{1}{3}", "\\boxed{0.333333}"),  # math-verify rounds floats to 6 places
        ("1, 2", "\\boxed{2, 1}"),
    ],
)
def test_equivalent(grader, gold, completion):
    result = grade_one(grader, gold, completion)
    assert result.status == "ok"
    assert result.correct, result


@pytest.mark.parametrize(
    "gold, completion",
    [
        ("\\frac{1}{3}", "\\boxed{0.33}"),
        ("(1,2)", "\\boxed{[1,2]}"),
        ("(1, 2]", "\\boxed{(1,2)}"),
        ("2", "\\boxed{3}"),
        ("5", "\\boxed{\\text{five}}"),
    ],
)
def test_not_equivalent(grader, gold, completion):
    result = grade_one(grader, gold, completion)
    assert result.status == "ok"
    assert not result.correct, result


def test_units_and_text(grader):
    # math-verify's unit normalisation drops "cm" and \text{} wrappers around
    # numbers, so all of these count as 5.
    assert grade_one(grader, "5", "\\boxed{5\\text{ cm}}") == Grade(True, "ok", "5")
    assert grade_one(grader, "5", "\\boxed{5 \\text{cm}}") == Grade(True, "ok", "5")
    assert grade_one(grader, "5", "\\boxed{\\text{5}}") == Grade(True, "ok", "5")
    assert grade_one(grader, "5\\text{ cm}", "\\boxed{5}") == Grade(True, "ok", "5")


def test_last_box_counts(grader):
    completion = _SELF_CORRECTION.format(first=3, last=2)
    assert grade_one(grader, "2", completion) == Grade(True, "ok", "2")
    assert grade_one(grader, "3", completion) == Grade(False, "ok", "2")


def test_adjacent_boxes_are_one_multi_part_answer(grader):
    # math-verify's documented behaviour: boxes close together and joined by
    # ",", "and", "or" form one set-valued answer -- even a quick
    # self-correction, which then matches neither number.
    assert grade_one(grader, "1, 2", "\\boxed{1} and \\boxed{2}").correct
    quick = grade_one(grader, "2", "\\boxed{3}, wait, actually \\boxed{2}")
    assert quick == Grade(False, "ok", "{2, 3}")


def test_gold_goes_first():
    # verify() is asymmetric: a gold relation accepts an equivalent interval,
    # but a gold interval does not accept a relation (allow_set_relation_comp=False).
    from math_verify import parse, verify

    relation, interval = parse("\\boxed{1 < x < 2}"), parse("\\boxed{(1, 2)}")
    assert verify(relation, interval) is True
    assert verify(interval, relation) is False

    with Grader() as g:
        by_relation, by_interval = g.grade(
            [("1 < x < 2", "\\boxed{(1, 2)}"), ("(1, 2)", "\\boxed{1 < x < 2}")]
        )
    assert by_relation.correct and not by_interval.correct


# ---------------------------------------------------------------------------
# Statuses
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("gold", ["", "   ", "}{", "\\text{}", "0.\\overline{3}"])
def test_bad_gold(grader, gold):
    assert grade_one(grader, gold, "\\boxed{5}") == Grade(False, "bad_gold", "")


@pytest.mark.parametrize("completion", ["", "I am not sure.", "\\boxed{}"])
def test_no_answer(grader, completion):
    assert grade_one(grader, "5", completion) == Grade(False, "no_answer", "")


def test_batch_order_and_empty(grader):
    assert grader.grade([]) == []
    golds = [str(i) for i in range(50)]
    results = grader.grade([(g, f"\\boxed{{{g}}}") for g in golds])
    assert [r.pred for r in results] == golds
    assert all(r.correct for r in results)


def test_rejects_non_string_items(grader):
    with pytest.raises(TypeError):
        grader.grade([("5", None)])


# ---------------------------------------------------------------------------
# Timeouts and worker lifecycle
# ---------------------------------------------------------------------------

_TOWER = "\\boxed{9^{9^{9^{9^{9}}}}}"


def test_hard_timeout_kills_and_replaces_worker():
    # At timeout_s=1 math-verify's whole-second alarms are disabled, so only
    # the parent's hard kill can stop this comparison.
    with Grader(timeout_s=1.0) as g:
        assert g.grade([("1", "\\boxed{1}")])[0].correct  # start the worker
        first_pid = g._proc.pid

        start = time.monotonic()
        results = g.grade([("2", "\\boxed{2}"), ("5", _TOWER), ("3", "\\boxed{3}")])
        elapsed = time.monotonic() - start

        assert [r.status for r in results] == ["ok", "timeout", "ok"]
        assert [r.correct for r in results] == [True, False, True]
        assert elapsed < 10.0
        assert g._proc.pid != first_pid  # the stuck worker was replaced
        # ...and the replacement keeps working on later calls.
        assert g.grade([("4", "\\boxed{4}")]) == [Grade(True, "ok", "4")]
    assert not _zombie_children()


def test_internal_timeout_reported_without_restart():
    # At timeout_s=2 math-verify gets a 1 s alarm per operation, which cuts
    # the slow sympy comparison in-process: status "timeout", same worker.
    with Grader(timeout_s=2.0) as g:
        g.grade([("1", "\\boxed{1}")])
        pid = g._proc.pid
        slow, after = g.grade([("5", "\\boxed{(10^{7})!}"), ("6", "\\boxed{6}")])
        assert slow.status == "timeout" and not slow.correct
        assert after == Grade(True, "ok", "6")
        assert g._proc.pid == pid


def test_worker_death_mid_item_is_error_and_recovers():
    with Grader(timeout_s=1.9) as g:  # < 2 s: no internal alarm, item runs until killed
        g.grade([("1", "\\boxed{1}")])
        pid = g._proc.pid
        out = {}
        t = threading.Thread(
            target=lambda: out.update(r=g.grade([("5", _TOWER), ("6", "\\boxed{6}")]))
        )
        t.start()
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        assert [r.status for r in out["r"]] == ["error", "ok"]


def test_worker_death_while_idle_is_transparent():
    with Grader() as g:
        g.grade([("1", "\\boxed{1}")])
        os.kill(g._proc.pid, signal.SIGKILL)
        g._proc.join(5)
        assert g.grade([("2", "\\boxed{2}")]) == [Grade(True, "ok", "2")]


def test_lifecycle_lazy_repeatable_no_zombies():
    g = Grader()
    assert g._proc is None  # lazy: nothing started until the first grade()
    g.close()
    g.close()  # idempotent
    with pytest.raises(RuntimeError):
        g.grade([("1", "\\boxed{1}")])

    pids = []
    for _ in range(3):
        with Grader() as g:
            assert g.grade([("1", "\\boxed{1}")])[0].correct
            pids.append(g._proc.pid)
        assert g._proc is None
    assert len(set(pids)) == 3
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")  # exited and reaped
    assert not _zombie_children()
