"""The grader's worker process (grading.py runs it with the "spawn" context): math-verify, or the user's
reward function, one item at a time, each result sent back as soon as it is known so the parent can
enforce a hard timeout per item. Only this process imports math-verify, sympy or the user's code."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from intro_lite.answers import strip_math_delimiters
from intro_lite.errors import ConfigError
from intro_lite.rewards import CORRECT_ABOVE, load_reward

# Populated by _worker_init inside the worker only.
_MV: dict[str, Any] = {}


def _worker_init(reward: str = "math") -> None:
    if reward != "math":
        _MV["reward_fn"] = load_reward(reward)  # loaded once per worker
        return
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    _MV.update(
        parse=parse,
        verify=verify,
        TimeoutException=TimeoutException,
        # One shared config for gold and completion: math-verify caches the
        # compiled extraction regexes with lru_cache(maxsize=1) keyed on the
        # config, so alternating configs would recompile them on every call.
        # boxed_match_priority=0 puts \boxed{} ahead of "final answer is $x$"
        # patterns (default 50 ties them); otherwise the default extraction.
        config=(LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()),
    )
    # Timeouts are reported through Grade.status; math-verify's own warnings
    # (including "timeout disabled") would only spam the training log.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Warm up: lazy sympy imports, regex compilation, latex grammar.
    _grade_one("\\frac{1}{2}", "so \\boxed{0.5}", None)


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, internal: int | None) -> list:
    # Cached because the same gold is graded against many sampled completions.
    # sympy objects are immutable, so sharing the parsed list is safe.
    return _MV["parse"](
        "\\boxed{" + strip_math_delimiters(gold) + "}",
        extraction_config=_MV["config"],
        parsing_timeout=internal,
        raise_on_error=True,
    )


def _grade_one(gold: str, completion: str, internal: int | None) -> tuple[bool, str, str]:
    parse, verify, TimeoutExc = _MV["parse"], _MV["verify"], _MV["TimeoutException"]

    try:
        gold_parsed = _parse_gold(gold, internal)
    except TimeoutExc:
        return False, "timeout", ""
    except Exception:
        return False, "bad_gold", ""
    # A gold that yields only math-verify's raw-string fallback (e.g. "}{",
    # "0.\overline{3}") would be graded by exact string match only: treat as
    # unparseable so the caller can count and skip it.
    if not any(not isinstance(g, str) for g in gold_parsed):
        return False, "bad_gold", ""

    try:
        pred_parsed = parse(
            completion,
            extraction_config=_MV["config"],
            parsing_timeout=internal,
            raise_on_error=True,
        )
    except TimeoutExc:
        return False, "timeout", ""
    if not pred_parsed:
        return False, "no_answer", ""
    pred_str = str(pred_parsed[0])

    # Same any-over-product that verify() does on lists, unrolled so an
    # internal timeout on one pair is visible (verify() would silently turn it
    # into False) and does not abort the remaining pairs. Gold goes first:
    # verify is asymmetric (e.g. gold "1<x<2" accepts pred "(1,2)", not vice versa).
    timed_out = False
    for g, p in itertools.product(gold_parsed, pred_parsed):
        try:
            if verify(g, p, timeout_seconds=internal, raise_on_error=True):
                return True, "ok", pred_str
        except TimeoutExc:
            timed_out = True
        except Exception:
            pass  # verify's default behaviour: a failing comparison means "not equal"
    return False, ("timeout" if timed_out else "ok"), pred_str


def _reward_one(gold: str | dict, completion: str, internal: int | None) -> tuple[bool, str, str, float | None, str]:
    """(correct, status, pred, reward, detail) of one item by the reward function, or math-verify."""
    fn = _MV.get("reward_fn")
    if fn is None:
        return (*_grade_one(gold["answer"] if isinstance(gold, dict) else gold, completion, internal), None, "")
    # A failure is status "error" with its reason (counted per step by the loop), never the end of the run.
    try:
        r = fn(gold if isinstance(gold, dict) else {"answer": gold}, completion)
    except BaseException as e:  # noqa: BLE001 - SystemExit from user code too
        return False, "error", "", 0.0, f"raised {type(e).__name__}: {_first_line(e)}"
    if isinstance(r, (str, bytes)) or r is None or not hasattr(r, "__float__"):
        return False, "error", "", 0.0, f"returned a {type(r).__name__}: {repr(r)[:60]} (a reward is a float or bool)"
    try:
        r = float(r)
    except Exception as e:  # noqa: BLE001 - a user type whose __float__ fails
        return False, "error", "", 0.0, f"returned a {type(r).__name__} that float() refuses: {_first_line(e)}"
    if r != r or r in (float("inf"), float("-inf")):
        return False, "error", "", 0.0, f"returned {r}: a reward must be finite"
    return r > CORRECT_ABOVE, "ok", "", r, ""


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else "(no message)"


def _where(e: BaseException) -> str:
    """" (file line N)" of the innermost frame outside intro-lite and the standard import machinery."""
    import traceback

    ours = str(Path(__file__).parent)
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith((ours, "<frozen"))]
    return f" ({frames[-1].filename} line {frames[-1].lineno})" if frames else ""


def _redirect_output(output: str | None) -> None:
    """The worker's fds 1 and 2 to `output` (appended), else its stdout onto its stderr: a reward that prints
    must not flood the terminal (under `intro-lite train`, stderr is the run's hidden log, kept as stderr.log)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if output is None:
        os.dup2(2, 1)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def worker_main(conn, internal: int | None, parent_pid: int, reward: str = "math", output: str | None = None) -> None:
    # Ctrl-C reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _redirect_output(output)
        _worker_init(reward)
    except ConfigError as e:  # load_reward's own one line (e.g. `fn` is not a function)
        conn.send(("init_error", str(e)))
        return
    except BaseException as e:  # noqa: BLE001 - the user's module may raise anything, SystemExit too
        conn.send(("init_error", f"reward {reward}: loading it raised {type(e).__name__}: {_first_line(e)}{_where(e)}"))
        return
    conn.send(("ready",))

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # parent went away
        if msg[0] == "stop":
            return
        _, batch_id, items = msg
        for idx, (gold, completion) in enumerate(items):
            if os.getppid() != parent_pid:
                return  # orphaned mid-batch: nobody will read the results
            try:
                correct, status, pred, reward, detail = _reward_one(gold, completion, internal)
            except BaseException as e:  # noqa: BLE001 - never let one item kill the worker
                correct, status, pred = False, "error", ""
                reward, detail = (None if "reward_fn" not in _MV else 0.0), f"raised {type(e).__name__}: {_first_line(e)}"
            try:
                conn.send(("result", batch_id, idx, correct, status, pred, reward, detail))
            except (BrokenPipeError, OSError):
                return
