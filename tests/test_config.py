import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from intro_lite.config import DEFAULTS_FILE, Config, ConfigError, load_config, to_toml

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_file_matches_dataclass_defaults():
    # The top-level intro_lite.toml documents the defaults; the dataclasses must agree with it.
    assert dataclasses.asdict(load_config(None)) == dataclasses.asdict(Config())
    with open(DEFAULTS_FILE, "rb") as f:
        on_disk = tomllib.load(f)
    assert set(on_disk) == {f.name for f in dataclasses.fields(Config)}


def test_layering_recipe_then_set(tmp_path):
    r = write(tmp_path, 'name = "x"\n[train]\nlr = 3e-4\nsteps = 7\n[intro]\nn_candidates = "all"\n')
    cfg = load_config(r, ["train.steps=9", "model.name_or_path=Qwen/Qwen2.5-1.5B", "lora.target_modules=['q_proj']"])
    assert cfg.name == "x" and cfg.train.lr == 3e-4 and cfg.train.steps == 9
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-1.5B"
    assert cfg.intro.n_candidates == "all"
    assert cfg.lora.target_modules == ["q_proj"]
    assert cfg.rollout.group_size == 4  # untouched default


def test_int_widens_to_float_but_not_the_reverse(tmp_path):
    assert load_config(write(tmp_path, "[intro]\nclip_max = 100\n")).intro.clip_max == 100.0
    with pytest.raises(ConfigError, match=r"'train.steps' must be an integer"):
        load_config(write(tmp_path, "[train]\nsteps = 1.5\n"))


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("[train]\nlearning_rate = 1e-4\n", r"r.toml: unknown key 'train.learning_rate'"),
        ("bogus = 1\n", r"unknown key 'bogus'"),
        ('[train]\nlr = "fast"\n', r"'train.lr' must be a number, got str"),
        ("[model]\nquantization = 'int3'\n", r"'model.quantization' must be one of"),
        ("[intro]\nn_candidates = 0\n", r"'intro.n_candidates' must be >= 1"),
        ("[intro]\nn_candidates = 'some'\n", r"'intro.n_candidates' must be"),
        ("[intro]\nclip_max = -1.0\n", r"'intro.clip_max' must be > 0"),
        ("[rollout]\ngroup_size = 0\n", r"'rollout.group_size' must be >= 1"),
        ("[train]\nlr = 2.0\n", r"'train.lr' must be in"),
        ("[data]\nsource = 'no/such/file.jsonl'\n", r"'data.source' file not found: no/such/file.jsonl"),
        ("train = 3\n", r"'train' must be a table"),
        ("[train\nlr = 1\n", r"r.toml: malformed TOML"),
        ("[lora]\nrank = 1000\n", r"'lora'"),
        ("[lora]\ntarget_modules = ['lm_head']\n", r"'lora'.*lm_head"),
        ("[rollout]\nquantization = 'bitsandbytes'\n", r"'rollout.quantization' = 'bitsandbytes' needs a CUDA GPU"),
        ("objective = 'ppo'\n", r"'objective' must be one of"),
        ("[eval]\nsource = 'math5000'\n", r"'eval.source'.*math5000"),
        ("reward = 'nonsense'\n", r"'reward' must be one of \['math', 'exact', 'choice'\]"),
        ("reward = 'no/such/file.py:fn'\n", r"'reward' 'no/such/file.py:fn': file not found"),
        ("reward = 'no_such_pkg_xyz.rewards:fn'\n", r"no module named 'no_such_pkg_xyz.rewards'"),
        ("[log]\nsamples_every = -1\n", r"'log.samples_every' must be >= 0"),
    ],
)
def test_bad_recipe_is_a_one_line_error_naming_the_key(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_bad_override_names_it():
    with pytest.raises(ConfigError, match=r"--set train.nope=1: unknown key 'train.nope'"):
        load_config(None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.lr"])


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        load_config("nope.toml")


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(None, ['data.hint_template="Q: {question}\\nA \\"{answer}\\"\\n"', "data.levels=[3,4]"])
    again = load_config(write(tmp_path, to_toml(cfg)))
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_shipped_recipes_load():
    # Every recipe validates, data included: the paper recipes read the packaged MATH set, not ../shared.
    recipes = sorted((REPO / "recipes").glob("*.toml"))
    assert len(recipes) >= 8
    for recipe in recipes:
        load_config(recipe)
        assert "../shared" not in recipe.read_text(), recipe


def test_cli_reports_bad_recipe_in_one_line(tmp_path):
    r = write(tmp_path, "[train]\nsteps = 'ten'\n")
    out = subprocess.run([sys.executable, "-m", "intro_lite.cli", "train", str(r)], capture_output=True, text=True)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'train.steps' must be an integer" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()
