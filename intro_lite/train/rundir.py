"""A run's directory: created (or checked on --resume) before anything is written, its warnings log."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from rich.markup import escape

from intro_lite.config import Config
from intro_lite.config import load_config, to_toml
from intro_lite.errors import ConfigError
from intro_lite.io import write_atomic
from intro_lite.train import dist


# Files a run writes into its directory; a fresh start under the same name removes the leftovers of
# one that died before logging a step (e.g. its "before" eval), so they never mix with the new run's.
RUN_FILES = ("eval.jsonl", "eval_samples.jsonl", "eval_summary.json", "warnings.log", "checkpoints", "adapters", "final")


def prepare_run_dir(cfg: Config, *, resume: bool = False) -> None:
    run_dir = cfg.run_dir
    if resume:
        if not (run_dir / "config.toml").exists():
            raise ConfigError(f"--resume: no run at {run_dir}")
        if dist.is_main():
            lock_run_dir(run_dir)
        saved = load_config(run_dir / "config.toml")
        diff = first_difference(dataclasses.asdict(saved), dataclasses.asdict(cfg))
        if diff:
            raise ConfigError(f"--resume: {run_dir}/config.toml has {diff}; resume with the run's own config")
        return
    if not dist.is_main():
        if (run_dir / "metrics.jsonl").exists():
            raise ConfigError(f"{run_dir}: a run already exists here; use --resume, another `name`, or remove it")
        return  # rank 0 writes the run directory
    try:
        nearest = next(p for p in (run_dir, *run_dir.parents) if p.exists())  # what mkdir would write into
        if nearest.is_dir() and not os.access(nearest, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_run_dir(run_dir)  # before anything is removed: another process may be training into this directory
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot write the run directory ({e.strerror or type(e).__name__})") from None
    if (run_dir / "metrics.jsonl").exists():
        unlock_run_dir(run_dir)
        raise ConfigError(f"{run_dir}: a run already exists here; use --resume, another `name`, or remove it")
    try:
        for name in RUN_FILES:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        write_atomic(run_dir / "config.toml", to_toml(cfg))
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot write the run directory ({e.strerror or type(e).__name__})") from None


_LOCKS: dict[str, int] = {}  # run dir -> the file descriptor of its lock, held by this process


def lock_run_dir(run_dir: Path) -> None:
    """One `intro-lite train` at a time per run: an exclusive flock on RUN/.lock, with the holder's pid in it.
    The kernel drops the lock when its process ends, however it ends (a SIGKILL too), so a stale lock from
    a killed run never blocks the next one; a live holder is named in one line."""
    import fcntl

    unlock_run_dir(run_dir)  # this process held it: an earlier train() of this process on the same run ended
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"{run_dir}: another `intro-lite train` (pid {holder}) is running on this run; "
                          "wait for it to finish or stop it") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _LOCKS[str(run_dir.resolve())] = fd


def unlock_run_dir(run_dir: Path) -> None:
    fd = _LOCKS.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)  # releases the flock


class Notes:
    """Warnings of a run: one line each on the console and appended to <run>/warnings.log."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "warnings.log"

    def __call__(self, msg: str) -> None:
        if msg and dist.is_main():  # every rank meets the same inputs: rank 0 says it once
            from intro_lite.quiet import warning_console

            warning_console().print(f"[yellow]warning:[/yellow] {escape(msg)}", soft_wrap=True, highlight=False)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(msg + "\n")


def first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in a:
        if isinstance(a[key], dict):
            if diff := first_difference(a[key], b[key], f"{prefix}{key}."):
                return diff
        elif a[key] != b[key]:
            return f"{prefix}{key} = {a[key]!r}, not {b[key]!r}"
    return ""
