"""A recipe that is a directory, not UTF-8, or unreadable is one line naming it (exit 2), never a traceback."""

import pytest
from typer.testing import CliRunner

from intro_lite.cli import app
from intro_lite.config import ConfigError, load_config


def test_recipe_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory, not a TOML file"):
        load_config(tmp_path)


def test_recipe_not_utf8(tmp_path):
    p = tmp_path / "r.toml"
    p.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"r\.toml: not UTF-8 text \(byte 11\)"):
        load_config(p)


@pytest.mark.parametrize("make", ["dir", "latin1", "missing"])
def test_cli_exits_2_with_one_line(tmp_path, make):
    p = tmp_path / "r.toml"
    if make == "dir":
        p.mkdir()
    elif make == "latin1":
        p.write_bytes(b'name = "caf\xe9"\n')
    result = CliRunner().invoke(app, ["train", str(p)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and "error:" in result.output
