"""Run names are single path components and --output/--name never travel through string templating."""

import pytest

from intro_lite.cli import run_overrides
from intro_lite.config import ConfigError, load_config


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\\\\b", "../escape", " lead"])
def test_names_that_leave_output_dir_are_refused(name):
    with pytest.raises(ConfigError, match=r"'name' must be one path component"):
        load_config(None, run_overrides([], None, name))


@pytest.mark.parametrize("output", ['runs/a"b', "runs\\\\x", "runs/with space", 'q"; name = "evil'])
def test_output_is_taken_literally(tmp_path, output):
    cfg = load_config(None, run_overrides([], tmp_path / output, "ok"))
    assert cfg.output_dir == str(tmp_path / output) and cfg.name == "ok"
    assert cfg.run_dir.parent == tmp_path / output
