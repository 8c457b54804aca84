"""Readers of run files (plot, show, the run summary, sweep reports, eval --compare) and the
destinations of --out (issue 24, part 2): a torn last line is dropped, a bad path is one line and
exit 2, checked before the work, and nothing is left behind."""

import json

from typer.testing import CliRunner

from intro_lite.cli import app
from test_runlog import fake_run

SAMPLE = {"step": 3, "index": 0, "problem_id": "p1", "prompt": "1+1", "answer": "2", "completion": "1+1=2",
          "correct": True, "status": "ok", "reward": 1.0, "trained": True, "tokens": ["1+1", "=", "2"],
          "w": [0.5, 1.0, 4.0], "log_q_over_p": [-0.69, 0.0, 1.39]}


def _one_error_line(res):
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def _torn(run):
    for name, record in (("metrics.jsonl", '{"step": 9, "lo'), ("samples.jsonl", '{"step": 4, "ind')):
        with open(run / name, "a") as f:
            f.write(record)  # a kill mid-write: no newline, half a record


def test_plot_and_show_read_past_a_torn_last_line(tmp_path):
    run = fake_run(tmp_path / "r")
    (run / "samples.jsonl").write_text(json.dumps(SAMPLE) + "\n")
    _torn(run)
    res = CliRunner().invoke(app, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "plots" / "loss.png").exists()
    res = CliRunner().invoke(app, ["show", str(run), "--out", str(tmp_path / "page.html")])
    assert res.exit_code == 0, res.output
    assert "w=4" in (tmp_path / "page.html").read_text()


def test_a_bad_line_before_the_last_is_one_line(tmp_path):
    run = fake_run(tmp_path / "r")
    text = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([text[0], "not json", *text[1:]]) + "\n")
    assert "line 2 is not valid JSON" in _one_error_line(CliRunner().invoke(app, ["plot", str(run)]))


def test_out_destinations_are_checked_before_the_work(tmp_path):
    run = fake_run(tmp_path / "r")
    (run / "samples.jsonl").write_text(json.dumps(SAMPLE) + "\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    assert "a file is in the way" in _one_error_line(CliRunner().invoke(app, ["plot", str(run), "--out", str(a_file)]))
    assert "is a directory" in _one_error_line(CliRunner().invoke(app, ["show", str(run), "--out", str(tmp_path)]))
    missing = tmp_path / "no" / "such" / "page.html"
    assert "does not exist" in _one_error_line(CliRunner().invoke(app, ["show", str(run), "--out", str(missing)]))
    assert a_file.read_text() == "keep me"
    assert not list(tmp_path.rglob(".*.tmp"))
    # probe says so before loading anything (it used to fail after ~20 s of work)
    res = CliRunner().invoke(app, ["probe", "recipes/tiny.toml", "--out", str(a_file)])
    assert "a file is in the way" in _one_error_line(res)


def test_eval_compare_on_a_directory_or_a_broken_results_file(tmp_path):
    assert "is a directory" in _one_error_line(CliRunner().invoke(app, ["eval", "--compare", str(tmp_path)]))
    broken = tmp_path / "results.json"
    broken.write_text(json.dumps({"schema": "intro-lite.eval/1", "results": [{"label": "base"}]}))
    assert "results[0] has no benchmark" in _one_error_line(CliRunner().invoke(app, ["eval", "--compare", str(broken)]))
