"""Messages that say what is wrong (issue 24, parts 4 and 5): one line, exit 2, the key named, nothing
swallowed by rich's markup; sweeps that never count a cell twice."""

import json

import pytest
from typer.testing import CliRunner

from intro_lite.cli import app
from intro_lite.config import ConfigError, load_config


def test_an_unknown_tiny_preset_fails_when_the_config_loads():
    res = CliRunner().invoke(app, ["train", "recipes/tiny.toml", "--set", "model.name_or_path=tiny-bogus"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "'model.name_or_path': 'tiny-bogus': no such tiny preset" in res.output
    with pytest.raises(ConfigError, match="'eval.source': 'tiny-nope'"):
        load_config("recipes/tiny.toml", ["eval.source=tiny-nope"])


def test_the_tiny_preset_names_match_the_builder():
    from intro_lite.config.sources import TINY_PRESETS
    from intro_lite.tiny.assets import PRESETS

    assert set(TINY_PRESETS) == set(PRESETS)


def test_bracketed_words_survive_in_errors_and_help(tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text('recipe = "x.toml"\n[budget]\nsteps = 1\nepochs = 2\n')
    res = CliRunner().invoke(app, ["sweep", str(sweep)])
    assert res.exit_code == 2 and "[budget] needs exactly one of" in res.output, res.output
    assert "([log]" in CliRunner().invoke(app, ["show", "--help"]).output
    assert "[eval]" in CliRunner().invoke(app, ["eval", "--help"]).output


def test_a_byte_order_mark_and_a_home_path(tmp_path):
    recipe = tmp_path / "bom.toml"
    recipe.write_bytes(b"\xef\xbb\xbf" + b'name = "bom"\noutput_dir = "~/runs"\n')
    cfg = load_config(recipe)
    assert cfg.name == "bom" and cfg.output_dir.endswith("/runs") and "~" not in cfg.output_dir


def _sweep(tmp_path, grid: str) -> str:
    path = tmp_path / "s.toml"
    path.write_text(f'recipe = "{tmp_path}/r.toml"\n[grid]\n{grid}\n[budget]\nsteps = 1\n')
    (tmp_path / "r.toml").write_text("")
    res = CliRunner().invoke(app, ["sweep", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    return " ".join(res.output.split())


def test_a_sweep_grid_never_runs_or_counts_a_cell_twice(tmp_path):
    assert "grid.seed lists 1 more than once" in _sweep(tmp_path, "seed = [0, 1, 1]")
    assert "'intro.n_candidates' is written twice" in _sweep(
        tmp_path, '"intro.n_candidates" = [5]\nintro = { n_candidates = [1] }')


def test_a_summary_over_no_problem_says_so(tmp_path):
    from intro_lite.summary import print_summary as _print_summary

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "rollout_accuracy": 0.5, "mean_length": 3.0}) + "\n")
    empty = {"n_problems": 0, "accuracy": 0.0, "mean_length": 0.0}
    (tmp_path / "eval_summary.json").write_text(json.dumps({"before": empty, "after": empty}))
    from rich.console import Console

    console = Console(record=True, width=200)
    import intro_lite.summary as cli

    real = cli.Console
    cli.Console = lambda *a, **k: console
    try:
        _print_summary(tmp_path)
    finally:
        cli.Console = real
    text = console.export_text()
    assert "no problem scored" in text and "0.000 ± 0.000" not in text
