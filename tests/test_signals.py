"""Ending a run from outside (issue 24, part 3): SIGTERM and Ctrl-C say in one line where the run stopped
and where --resume continues; a second `intro-lite train` on a live run is refused; nothing of the run is
left outside its directory."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_reliability import TEST_PRESET

REPO = Path(__file__).resolve().parent.parent
RUN = (*TEST_PRESET, "--set", "train.steps=4", "--set", "train.checkpoint_every=1")


def _start(tmp_path, name, *extra, env=None, resume=False):
    cmd = [sys.executable, "-m", "intro_lite.cli", "train", "recipes/tiny.toml", "--no-progress", "--output", str(tmp_path),
           "--name", name, *RUN, *extra, *(["--resume"] if resume else [])]
    # SIGINT as a terminal delivers it: a suite started as a background job (`cmd &`) ignores SIGINT, and
    # that disposition would pass to the run, which would then sleep through the test's Ctrl-C.
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_steps(run: Path, n: int, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.5)
    raise AssertionError(f"{run}: fewer than {n} steps after {timeout} s")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["term", "int"])
def test_a_signal_stops_the_run_in_one_line_and_resume_finishes_it(tiny_assets, tmp_path, sig, code):
    tmp_before = set(Path("/tmp").glob("intro-lite-stderr-*"))
    # Rank 0 stops answering in step 3 (after steps 1-2 and their checkpoints): the signal finds it there.
    first = _start(tmp_path, "r", env={"INTRO_LITE_FAULT_STALL": "0:3"})
    _wait_for_steps(tmp_path / "r", 2, first)
    second = _start(tmp_path, "r")  # the same run, from another terminal
    out, err = second.communicate(timeout=300)
    assert second.returncode == 2, err[-2000:]
    assert f"another `intro-lite train` (pid {first.pid}) is running on this run" in err
    assert (tmp_path / "r" / "checkpoints" / "step-2").is_dir()  # the refused start removed nothing
    first.send_signal(sig)
    out, err = first.communicate(timeout=120)
    assert first.returncode == code, err[-2000:]
    assert "Traceback" not in err and "last lines of the hidden library output" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "interrupted: at step 2; `intro-lite train ... --resume` continues from step 2", err[-2000:]
    assert set(Path("/tmp").glob("intro-lite-stderr-*")) == tmp_before
    resumed = _start(tmp_path, "r", resume=True)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 4


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    from intro_lite.train.rundir import lock_run_dir, unlock_run_dir

    run = tmp_path / "r"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from pathlib import Path; from intro_lite.train.rundir import lock_run_dir; "
                               "lock_run_dir(Path(sys.argv[2])); print('locked', flush=True); time.sleep(600)",
                               str(REPO), str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    from intro_lite.config import ConfigError

    with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
        lock_run_dir(run)
    holder.kill()
    holder.wait()
    lock_run_dir(run)  # the kernel dropped the dead holder's lock: no stale lock to clear by hand
    assert (run / ".lock").read_text() == str(os.getpid())
    unlock_run_dir(run)
