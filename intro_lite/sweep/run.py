"""Run a sweep: the shared start run once, then every cell not yet DONE, sharing one vLLM engine.
A finished cell is never re-run; an interrupted one resumes; a failing one is recorded and the sweep goes on."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from intro_lite.config import Config, load_config
from intro_lite.errors import ConfigError, first_line
from intro_lite.io import write_atomic  # the project's one atomic writer (temp name, fsync, rename)
from intro_lite.sweep.spec import Sweep, cell_config, cells, start_config


def run_sweep(sweep: Sweep, *, say: Callable[[str], None] = print, progress: bool = False) -> Path:
    """Start run (once), then every cell not yet DONE; returns the sweep dir. Failures are recorded, not raised."""
    from intro_lite.grading import Grader
    from intro_lite.rewards import BUILTIN
    from intro_lite.rollout.engine import RolloutEngine
    from intro_lite.tiny.assets import resolve_model_path
    from intro_lite.train.loop import engine_settings
    from intro_lite.train import train

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per cell drowns the sweep's own lines
    sweep.dir.mkdir(parents=True, exist_ok=True)
    # A copy for `--report DIR` and for the record; `recipe` inside stays relative to the original file.
    write_atomic(sweep.dir / "sweep.toml", sweep.file.read_text())
    write_atomic(sweep.dir / "sweep.json", json.dumps({"file": str(sweep.file)}) + "\n")
    engine, engine_key, graders = None, None, {}  # one grader per `reward` the cells use
    jobs = ([("start", start_config(sweep))] if sweep.start is not None else []) + \
           [(c.name, cell_config(sweep, c)) for c in cells(sweep)]
    try:
        for i, (name, cfg) in enumerate(jobs):
            run_dir = cfg.run_dir
            if (run_dir / "DONE").exists():
                check_unchanged(run_dir, cfg)
                say(f"[{i + 1}/{len(jobs)}] {name}: done, skipped")
                continue
            if name != "start" and sweep.start is not None and not (sweep.dir / "start" / "DONE").exists():
                _record_failure(run_dir, "the shared start run did not finish")
                say(f"[{i + 1}/{len(jobs)}] {name}: FAILED (the shared start run did not finish)")
                continue
            settings = engine_settings(cfg, resolve_model_path(cfg.model.name_or_path))
            settings["seed"] = 0  # rollouts and evals seed every request; the engine's own seed is unused
            if settings != engine_key:  # share one vLLM engine while the base and its limits stay the same
                if engine is not None:
                    engine.close()
                engine, engine_key = RolloutEngine(**settings), settings
            resume = _prepare(run_dir)
            say(f"[{i + 1}/{len(jobs)}] {name}: {'resuming' if resume else 'running'}")
            t0 = time.time()
            try:
                if cfg.reward not in graders:
                    user_code = cfg.reward not in BUILTIN  # its prints go to a file, not between the sweep's lines
                    graders[cfg.reward] = Grader(reward=cfg.reward, output=sweep.dir / "reward-output.log" if user_code else None)
                train(cfg, progress=progress, resume=resume, engine=engine, grader=graders[cfg.reward])
            except Exception as e:  # one bad cell must not cost the others; KeyboardInterrupt still stops
                _record_failure(run_dir, traceback.format_exc())
                say(f"[{i + 1}/{len(jobs)}] {name}: FAILED: {type(e).__name__}: {first_line(e)}")
                continue
            write_atomic(run_dir / "DONE", json.dumps({"seconds": time.time() - t0}) + "\n")
            say(f"[{i + 1}/{len(jobs)}] {name}: done in {time.time() - t0:.0f} s")
    finally:
        for grader in graders.values():
            grader.close()
        if engine is not None:
            engine.close()
    return sweep.dir


def _prepare(run_dir: Path) -> bool:
    """True to resume an interrupted cell from its checkpoint; else start it afresh (clearing leftovers)."""
    import shutil

    (run_dir / "FAILED").unlink(missing_ok=True)
    ckpts = run_dir / "checkpoints"
    if ckpts.exists() and any((p / "COMPLETE").exists() for p in ckpts.glob("step-*")):
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return False


def check_unchanged(run_dir: Path, cfg: Config) -> None:
    """A finished cell is reused only if the sweep would still run it with the same config."""
    import dataclasses

    from intro_lite.train.rundir import first_difference

    saved = load_config(run_dir / "config.toml")
    diff = first_difference(dataclasses.asdict(saved), dataclasses.asdict(cfg))
    if diff:
        raise ConfigError(f"{run_dir} finished with {diff}; the sweep file changed since: use another sweep name")


def _record_failure(run_dir: Path, text: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "FAILED", text)
