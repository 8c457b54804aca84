"""`intro-lite train` hides the libraries' start-up output (in RUN_DIR/stderr.log) unless --verbose."""

import os
import subprocess
import sys

import pytest

from intro_lite.quiet import hidden_stderr, keep_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fd_and_python_stderr_go_to_the_log(capfd, tmp_path):
    with hidden_stderr() as log:
        os.write(2, b"C++ NUMA notice\n")  # what torch's C++ side does
        print("python stderr", file=sys.stderr)
    assert capfd.readouterr().err == ""
    (tmp_path / "run").mkdir()
    keep_log(log, tmp_path / "run")
    text = (tmp_path / "run" / "stderr.log").read_text()
    assert "C++ NUMA notice" in text and "python stderr" in text
    assert log.closed  # a nameless file: nothing is left to remove, whatever ends the process


def test_a_crash_shows_the_hidden_tail_but_a_one_line_error_does_not(capfd):
    with pytest.raises(KeyError), hidden_stderr(one_line_errors=(ValueError,)):
        os.write(2, b"engine said why\n")
        raise KeyError("boom")
    assert "engine said why" in capfd.readouterr().err
    with pytest.raises(ValueError), hidden_stderr(one_line_errors=(ValueError,)):
        os.write(2, b"noise\n")
        raise ValueError("one line")
    assert "noise" not in capfd.readouterr().err


def test_disabled_is_a_no_op(capfd):
    with hidden_stderr(False) as log:
        os.write(2, b"shown\n")
    assert log is None and "shown" in capfd.readouterr().err


@pytest.mark.slow
def test_train_cli_is_quiet_unless_verbose(tiny_assets, tmp_path):
    args = [sys.executable, "-m", "intro_lite.cli", "train", "recipes/tiny.toml", "--output", str(tmp_path),
            "--set", "model.name_or_path=tiny-test", "--set", "data.source=tiny-test", "--set", 'eval.source=""',
            "--set", "train.steps=1", "--set", "train.prompts_per_step=2", "--set", "rollout.max_new_tokens=8",
            "--set", "train.checkpoint_every=0", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": REPO}
    quiet = subprocess.run(args + ["--name", "q"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    hidden = (tmp_path / "q" / "stderr.log").read_text()
    assert "FutureWarning" in hidden or "Loading" in hidden  # the chatter happened, into the log
    for noise in ("FutureWarning", "NUMA", "gemm_4bit_forward", "Loading weights", "Loading safetensors"):
        assert noise not in quiet.stderr and noise not in quiet.stdout, noise
    loud = subprocess.run(args + ["--name", "v", "--verbose"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert loud.returncode == 0 and not (tmp_path / "v" / "stderr.log").exists()
    assert any(noise in loud.stderr for noise in ("FutureWarning", "Loading weights", "Loading safetensors"))


def test_the_hidden_log_has_no_name_outside_the_run(tmp_path, monkeypatch):
    # A kill cannot leave /tmp/intro-lite-stderr-*.log behind: the log is never linked into a directory.
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with hidden_stderr() as log:
        os.write(2, b"chatter\n")
        assert list(tmp_path.iterdir()) == []
    assert list(tmp_path.iterdir()) == []
    keep_log(log, tmp_path / "missing-run")  # no run dir (the config failed first): freed, nowhere written
    assert log.closed and list(tmp_path.iterdir()) == []
