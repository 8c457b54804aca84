"""Answer grading: the project's only grader, used by both training rewards and eval.

Built on math-verify, or a reward function (`reward` in the config; rewards.py), which runs in the
same worker under the same hard timeout. All of it runs in a persistent worker process
(grading_worker.py; multiprocessing "spawn" context: the parent holds torch/vLLM threads, so forking
it is unsafe). The parent enforces a hard wall-clock timeout per item and kills + replaces the worker
when an item overruns, so a pathological answer can cost at most its own timeout and never hang
training. The parent never imports math-verify or sympy.

A user's reward that fails (raises, returns no number, overruns, kills the worker) is named in one
line, once per kind of failure, with the record and the first error (`on_failure`); its prints go to
the worker's `output` file or its stderr, never the terminal's stdout.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing as mp
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from intro_lite.answers import extract_boxed
from intro_lite.errors import ConfigError
from intro_lite.grading_worker import worker_main
from intro_lite.rewards import BUILTIN

__all__ = ["Grade", "Grader", "extract_boxed"]

log = logging.getLogger(__name__)

# Import of math-verify + sympy and the first regex compile take ~1-2 s (more
# on a loaded 2-core box); this bounds how long we wait for a fresh worker.
# It is not charged to any item's timeout.
_WORKER_STARTUP_TIMEOUT_S = 120.0
_WORKER_STOP_GRACE_S = 2.0


@dataclass(frozen=True)
class Grade:
    correct: bool
    # "ok" | "timeout" | "no_answer" | "bad_gold" | "error"
    status: str
    # First parsed element of the completion as a string, or "".
    pred: str
    # The reward function's value; None = math-verify, whose reward is 1/0 (`value`).
    reward: float | None = None
    # Why a reward function's grading failed, "<kind>: <specifics>" (e.g. "raised ValueError: ..."); "" = it did not.
    detail: str = ""

    @property
    def value(self) -> float:
        return float(self.correct) if self.reward is None else self.reward


def _internal_timeout_s(timeout_s: float) -> int | None:
    """Per-operation timeout handed to math-verify's own signal.alarm-based timeouts.

    math-verify only takes whole seconds, and an item runs up to ~4 such
    operations (gold parse, completion parse, comparisons). Using half the hard
    budget lets a single slow sympy call be cut in-process (no worker restart).
    Below 2 s the smallest alarm (1 s) would race the hard kill, so it is
    disabled and the hard kill alone applies.
    """
    internal = int(timeout_s // 2)
    return internal if internal >= 1 else None


# ---------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------

_live_graders: "weakref.WeakSet[Grader]" = weakref.WeakSet()


@atexit.register
def _close_all_graders() -> None:
    # Fallback for graders that were never closed; close() is idempotent.
    for grader in list(_live_graders):
        grader.close()


class _WorkerDied(Exception):
    pass


class Grader:
    """Grades (gold_answer, completion_text) pairs with math-verify (or `reward`, see rewards.py) under
    a hard per-item timeout. The gold may be a problem dict (rewards.problem_dict), which a reward
    function receives whole.

    Owns one lazily started worker process, reused across grade() calls.
    Use as a context manager (or call close()). Not meant to be shared across
    threads concurrently; calls are serialised by a lock.

    A user's reward: each kind of failure ("raised ValueError", "gave no result", ...) is told once, in
    one line naming the reward, the record and the first error, to `on_failure` (default: the terminal's
    stderr); `failures` counts them all. Its prints go to `output` (appended), else to the worker's stderr.
    """

    def __init__(self, timeout_s: float = 5.0, reward: str = "math", *, output: Path | None = None,
                 on_failure: Callable[[str], None] | None = None):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s, self.reward = float(timeout_s), reward
        self.output = None if output is None else str(output)
        self.on_failure = on_failure or _say_on_terminal
        self.failures: dict[str, int] = {}
        self._internal = _internal_timeout_s(self.timeout_s)
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()
        self._batch_ids = itertools.count()
        self._closed = False
        _live_graders.add(self)

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop_worker()
        _live_graders.discard(self)

    def _start_worker(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self._internal, os.getpid(), self.reward, self.output),
            name="intro-lite-grader",
            daemon=True,  # multiprocessing's own atexit also reaps it
        )
        proc.start()
        # Drop our copy of the child's end so a dead worker shows up as EOF.
        child_conn.close()
        self._proc, self._conn = proc, parent_conn

        try:
            if not parent_conn.poll(_WORKER_STARTUP_TIMEOUT_S):
                raise RuntimeError(
                    f"grading worker did not start within {_WORKER_STARTUP_TIMEOUT_S:.0f}s"
                )
            msg = parent_conn.recv()
        except (EOFError, OSError) as e:
            self._kill_worker()
            raise RuntimeError(f"grading worker died during start-up: {e!r}") from e
        except BaseException:
            self._kill_worker()
            raise
        if msg[0] != "ready":
            self._kill_worker()
            if self.reward in BUILTIN:
                raise RuntimeError(f"grading worker failed to start (reward {self.reward!r}): {msg[1]}")
            raise ConfigError(msg[1])

    def _kill_worker(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is not None:
            proc.kill()
            proc.join(5.0)  # reap: no zombies
            if proc.exitcode is not None:
                proc.close()
        if conn is not None:
            conn.close()

    def _stop_worker(self) -> None:
        proc, conn = self._proc, self._conn
        if proc is None:
            return
        try:
            conn.send(("stop",))
            proc.join(_WORKER_STOP_GRACE_S)
        except (OSError, ValueError):
            pass
        self._kill_worker()  # no-op kill if it already exited; reaps + closes

    def __del__(self) -> None:
        # Last resort for a Grader dropped without close(); atexit covers interpreter exit.
        try:
            self._kill_worker()
        except Exception:
            pass

    # -- grading -------------------------------------------------------------

    def _recv_result(self, deadline: float):
        """Next message from the worker, or None if the deadline passes first."""
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0 or not self._conn.poll(remaining):
                return None
            return self._conn.recv()
        except (EOFError, OSError) as e:
            raise _WorkerDied(repr(e)) from e

    def grade(self, items: list[tuple[str, str]]) -> list[Grade]:
        """Grade (gold_answer, completion_text) pairs; returns one Grade per item, in order."""
        items = list(items)
        for gold, completion in items:
            if not isinstance(gold, (str, dict)) or not isinstance(completion, str):
                raise TypeError("items must be (gold: str | problem dict, completion: str) pairs")

        with self._lock:
            if self._closed:
                raise RuntimeError("Grader is closed")
            try:
                grades = self._grade_locked(items)
            except BaseException:
                # E.g. KeyboardInterrupt mid-batch: the worker may still be
                # sending results for this batch, so it cannot be reused.
                self._kill_worker()
                raise
        if self.reward not in BUILTIN:
            self._tell_failures(items, grades)
        return grades

    def _tell_failures(self, items: list[tuple[str, str]], grades: list[Grade]) -> None:
        for (gold, _), g in zip(items, grades):
            if not g.detail:
                continue
            kind = g.detail.split(":")[0]
            self.failures[kind] = self.failures.get(kind, 0) + 1
            if self.failures[kind] == 1:
                record = f"record {gold['id']!r}" if isinstance(gold, dict) and "id" in gold else f"answer {_gold(gold)!r}"
                self.on_failure(f"reward {self.reward} {g.detail} (on {record}; told once, every grading that fails "
                                "this way scores 0 and is counted)")

    def _failed_reward(self) -> float | None:
        return None if self.reward == "math" else 0.0

    def _grade_locked(self, items: list[tuple[str, str]]) -> list[Grade]:
        results: list[Grade | None] = [None] * len(items)
        pos = 0
        while pos < len(items):
            if self._proc is not None and not self._proc.is_alive():
                self._kill_worker()  # died while idle (e.g. OOM-killed): just replace it
            if self._proc is None:
                self._start_worker()
            batch_id = next(self._batch_ids)
            # One round trip for the whole remainder; results stream back one
            # by one so each item gets its own deadline.
            self._conn.send(("grade", batch_id, items[pos:]))
            batch_start = pos
            # The worker starts item k right after sending result k-1, so a
            # deadline counted from when we receive k-1 never shortchanges k.
            deadline = time.monotonic() + self.timeout_s
            while pos < len(items):
                try:
                    msg = self._recv_result(deadline)
                except _WorkerDied as e:
                    log.warning("grading worker died on item %d (%s); restarting", pos, e)
                    self._proc.join(1.0)
                    code = self._proc.exitcode
                    results[pos] = Grade(False, "error", "", self._failed_reward(),
                                         f"ended the grading worker (exit code {code})")
                    pos += 1
                    self._kill_worker()
                    break
                if msg is None:
                    log.warning(
                        "grading item %d exceeded %.1fs; killing worker", pos, self.timeout_s
                    )
                    results[pos] = Grade(False, "timeout", "", self._failed_reward(),
                                         f"gave no result within {self.timeout_s:g} s")
                    pos += 1
                    self._kill_worker()
                    break
                _, got_batch, idx, correct, status, pred, reward, detail = msg
                if got_batch != batch_id or batch_start + idx != pos:
                    raise RuntimeError(f"grading worker protocol error: {msg[:3]!r} at item {pos}")
                results[pos] = Grade(bool(correct), status, pred, reward, detail)
                pos += 1
                deadline = time.monotonic() + self.timeout_s
        return results  # type: ignore[return-value]


def _gold(gold: str | dict) -> str:
    return (gold.get("answer", "") if isinstance(gold, dict) else gold)[:40]


def _say_on_terminal(message: str) -> None:
    from rich.markup import escape

    from intro_lite.quiet import warning_console

    warning_console().print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True, highlight=False)
