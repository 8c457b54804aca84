"""Quieter runs: the libraries' start-up chatter (vLLM's and bitsandbytes' notices, FutureWarnings,
torch's C++ NUMA notice, the weight-loading bars) goes to <run>/stderr.log instead of the terminal,
so the progress bar and its alarms stay readable. `intro-lite train --verbose` shows it all.

It has to be the file descriptor, not just `sys.stderr`: the NUMA notice comes from C++."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

TAIL_LINES = 40  # shown when the command fails with something other than a one-line error
_TERMINAL = None  # the real stderr while it is hidden: the run's own warnings still go there


def warning_console():
    """A rich Console on the terminal's stderr, also while the libraries' stderr is hidden."""
    from rich.console import Console

    return Console(file=_TERMINAL) if _TERMINAL is not None else Console(stderr=True)


@contextlib.contextmanager
def hidden_stderr(enabled: bool = True, one_line_errors: tuple[type, ...] = (), kept_as: Path | None = None):
    """Send fd 2 (and `sys.stderr`) to a temporary log while active; yields it (an open file). The file has no
    name (`tempfile.TemporaryFile`): whatever ends the process, a SIGKILL too, the kernel frees it, so nothing
    of a run outlives it outside its run dir. If the body raises anything but `one_line_errors`, the log's last
    lines are printed first, naming `kept_as` (where `keep_log` copies it)."""
    if not enabled:
        yield None
        return
    sys.stderr.flush()
    log = tempfile.TemporaryFile("w+")
    global _TERMINAL
    saved_fd, saved_stderr = os.dup(2), sys.stderr
    _TERMINAL = os.fdopen(os.dup(saved_fd), "w", buffering=1)
    os.dup2(log.fileno(), 2)
    sys.stderr = log
    try:
        yield log
    except BaseException as e:
        if not isinstance(e, one_line_errors):
            _restore(log, saved_fd, saved_stderr)
            log.seek(0)
            tail = log.read().splitlines()[-TAIL_LINES:]
            if tail:
                print(f"--- last lines of the hidden library output ({kept_as or 'not kept'}) ---", *tail, "---", sep="\n",
                      file=sys.stderr)
        raise
    finally:
        _restore(log, saved_fd, saved_stderr)


def _restore(log, saved_fd: int, saved_stderr) -> None:
    global _TERMINAL
    if sys.stderr is saved_stderr:
        return  # already restored
    if _TERMINAL is not None:
        _TERMINAL.close()
        _TERMINAL = None
    log.flush()
    sys.stderr = saved_stderr
    os.dup2(saved_fd, 2)
    os.close(saved_fd)


def keep_log(log, run_dir: Path, name: str = "stderr.log") -> None:
    """Copy the hidden output into the run directory (stderr.log, appended on --resume), then free it."""
    if log is None or log.closed:
        return
    try:
        if run_dir.is_dir():
            log.seek(0)
            with open(run_dir / name, "a") as out:
                shutil.copyfileobj(log, out)
    finally:
        log.close()
