"""`intro-lite eval` writes nothing until its inputs are known good, and results.json appears whole or not at all."""

from typer.testing import CliRunner

from intro_lite.cli import app


def test_missing_base_model_is_one_line_and_writes_nothing(tmp_path, tiny_assets):
    out = tmp_path / "out"
    bad = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "no-such-model"), "--benchmarks", "tiny-test",
                                   "--out", str(out)], env={"COLUMNS": "300"})
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "no-such-model" in bad.output, bad.output
    assert not out.exists()


def test_out_that_is_a_file_is_one_line(tmp_path, tiny_assets):
    out = tmp_path / "file"
    out.write_text("x")
    r = CliRunner().invoke(app, ["eval", "--model", "tiny-test", "--benchmarks", "tiny-test", "--limit", "2",
                                 "--max-new-tokens", "16", "--out", str(out)], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "a file is in the way" in r.output and r.output.count("\n") == 1, r.output
    assert out.read_text() == "x"


def test_interrupted_eval_leaves_no_results_json(tmp_path, monkeypatch, tiny_assets):
    """A failure after the run started leaves only *.partial files; a rerun into the same --out works."""
    import intro_lite.eval.run as run

    real = run._score_one

    def dies(*a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    args = ["eval", "--model", "tiny-test", "--benchmarks", "tiny-test", "--limit", "2", "--max-new-tokens", "16",
            "--out", str(out)]
    monkeypatch.setattr(run, "_score_one", dies)
    assert CliRunner().invoke(app, args).exit_code != 0
    assert not (out / "results.json").exists() and (out / "results.partial.json").is_file()
    monkeypatch.setattr(run, "_score_one", real)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "results.json").is_file() and (out / "samples.jsonl").is_file()
    assert not (out / "results.partial.json").exists() and not (out / "samples.partial.jsonl").exists()
