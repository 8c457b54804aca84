"""`intro-lite train` on what surrounds a recipe: the packaged defaults alone, a run directory that cannot
be written, a run restarted after dying early, and training data whose gold answers the grader cannot
parse. Each case is one line and exit 2 (or a warning line and a run), never a traceback."""

import json

import pytest
from test_reliability import TEST_PRESET, error_lines
from test_resume import metrics, run_cli
from typer.testing import CliRunner

from intro_lite.cli import app

pytestmark = pytest.mark.slow


def train_in_process(tmp_path, *args):
    return CliRunner().invoke(app, ["train", *args, "--no-progress", "--output", str(tmp_path / "out")],
                              env={"COLUMNS": "400"})


def test_the_packaged_defaults_alone_train(tiny_default_assets, tmp_path):
    # An empty recipe: the default model (tiny, 512 positions) with rollout.max_model_len = 0 = its own.
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "intro_lite.cli", "train", str(empty), "--no-progress", "--output",
                          str(tmp_path), "--name", "defaults", "--set", "train.steps=1", "--set", "train.prompts_per_step=2"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [r["step"] for r in metrics(tmp_path / "defaults" / "metrics.jsonl")] == [1]
    # Too long for the model's own context: one line naming both keys, before anything is written.
    result = train_in_process(tmp_path, str(empty), "--set", "rollout.max_new_tokens=1000")
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [
        f"error: data.max_prompt_tokens (256) + rollout.max_new_tokens (1000) = 1256 exceeds the context length 512 "
        f"({tiny_default_assets.model_dir}'s own, rollout.max_model_len = 0)"]
    assert not (tmp_path / "out").exists()


def test_the_paper_recipe_keeps_its_lengths():
    from intro_lite.config import load_config

    cfg = load_config("recipes/qwen2.5-1.5b.toml")
    assert (cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens, cfg.rollout.max_model_len) == (512, 1536, 2560)


@pytest.mark.parametrize("case", ["output under a file", "output is a file", "not writable"])
def test_a_run_directory_that_cannot_be_written(tiny_assets, tmp_path, monkeypatch, case):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    output = {"output under a file": blocker / "runs", "output is a file": blocker, "not writable": tmp_path / "ro"}[case]
    if case == "not writable":  # tests run as root, where chmod does not block writes: fake the permission check
        output.mkdir()
        import os

        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and not (str(p).startswith(str(output)) and mode & os.W_OK))
    result = CliRunner().invoke(app, ["train", "recipes/tiny.toml", *TEST_PRESET, "--no-progress", "--output", str(output),
                                      "--name", "r"], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    reason = {"not writable": "Permission denied"}.get(case, "Not a directory")
    assert error_lines(result.output) == [f"error: {output / 'r'}: cannot write the run directory ({reason})"]
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a-file"] + (["ro"] if case == "not writable" else []))
    assert not (tmp_path / "ro" / "r").exists()


def test_a_restart_after_the_before_eval_starts_clean(tiny_assets, tmp_path, monkeypatch):
    # Killed inside the first adapter push after its "before" eval was logged; restarted without --resume.
    run = (*TEST_PRESET, "--set", "train.steps=1", "--set", "eval.source=tiny-test", "--set", "eval.limit=2",
           "--set", "eval.max_new_tokens=8")
    monkeypatch.setenv("INTRO_LITE_FAULT_AT", "adapter_push:1")
    assert run_cli(tmp_path, "again", *run).returncode == -9
    assert [r["when"] for r in metrics(tmp_path / "again" / "eval.jsonl")] == ["before"]
    monkeypatch.delenv("INTRO_LITE_FAULT_AT")
    out = run_cli(tmp_path, "again", *run)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [r["when"] for r in metrics(tmp_path / "again" / "eval.jsonl")] == ["before", "after"]
    assert sorted(p.name for p in (tmp_path / "again" / "adapters").iterdir()) == ["v1"]


def bad_gold_data(tiny_assets, path, n_bad: int, null_problem: bool = False):
    rows = [json.loads(line) for line in tiny_assets.train_file.read_text().splitlines()[:40]]
    for r in rows[:n_bad]:
        r["answer"] = "}{"  # math-verify reads it only as a raw string: the grader calls it bad_gold
    if null_problem:
        rows[-1]["problem"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ("--set", f'data.source="{path}"', "--set", "data.answer_field=answer", "--set", "objective=intro")


def test_gold_answers_the_grader_cannot_parse(tiny_assets, tmp_path, monkeypatch):
    from intro_lite.grading import Grader

    closed, close = [], Grader.close
    monkeypatch.setattr(Grader, "close", lambda self: closed.append(self) or close(self))
    data = tmp_path / "bad.jsonl"
    result = train_in_process(tmp_path, "recipes/tiny.toml", *TEST_PRESET, *bad_gold_data(tiny_assets, data, 40))
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [f"error: data.source {data}: the grader cannot parse any of 40 sampled gold "
                                          "answers (first: id 'tiny/train/0', answer '}{')"]
    assert not (tmp_path / "out").exists()
    assert len(closed) == 1 and closed[0]._proc is None  # the run's own grader (it graded the golds) was closed


def test_some_bad_golds_and_skipped_records_are_one_warning_each(tiny_assets, tmp_path):
    data = tmp_path / "some.jsonl"
    out = run_cli(tmp_path, "some", *TEST_PRESET, *bad_gold_data(tiny_assets, data, 5, null_problem=True),
                  "--set", "train.steps=1")
    assert out.returncode == 0, out.stderr[-2000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, out.stderr[-2000:]
    assert warnings[0].startswith(f"warning: skipped 1 of 40 records (no gold 0, bad 1); first: {data}:40: ")
    assert warnings[1].startswith(f"warning: data.source {data}: 5 of 39 sampled gold answers cannot be parsed by "
                                  "the grader (first: id ")
    assert (tmp_path / "some" / "warnings.log").read_text().splitlines() == [w.removeprefix("warning: ") for w in warnings]
