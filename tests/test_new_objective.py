"""Adding an objective is one file (docs/objectives.md, "Adding an objective"): a new objective, in a
file of the user's own or dropped into intro_lite/objectives/, trains through the CLI with no other
file changed, and its own config table reaches its loss."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Reward-weighted NLL of the kept rationales, scaled by its one setting: loss = −weight · mean over rows
# of the row's mean token log-prob, and `nll` that mean's negative, so a step logs loss = weight · nll.
OBJECTIVE = '''
from dataclasses import dataclass

from intro_lite.objectives import Needs, Objective{register_import}
from intro_lite.objectives.common import token_logprobs


@dataclass(frozen=True)
class WeightedNllConfig:
    weight: float = 1.0


{decorator}class WeightedNll(Objective):
    config = WeightedNllConfig
    needs = Needs(kept_only=True)
    stat_keys = ("nll", "n_tokens")

    def compute(self, inputs, cfg=None, *, generator=None):
        cfg = cfg or self.default_config()
        mask = inputs.mask.bool()
        per_row = token_logprobs(inputs.policy_logits, inputs.tokens, mask).sum(1) / mask.sum(1).clamp(min=1)
        return -cfg.weight * per_row.mean(), {{"nll": float(-per_row.mean()), "n_tokens": float(mask.sum())}}
'''

FLAGS = ["--no-progress", "--set", "train.steps=2", "--set", "train.prompts_per_step=4", "--set", "rollout.max_new_tokens=64",
         "--set", "model.quantization=none", "--set", 'eval.source=""', "--set", "train.checkpoint_every=0"]


def _train(recipe: Path, out: Path, cwd: Path = REPO) -> list[dict]:
    cmd = [sys.executable, "-m", "intro_lite.cli", "train", str(recipe), "--output", str(out), "--name", "new", *FLAGS]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "new" / "metrics.jsonl").read_text().splitlines()]


def _check(lines: list[dict], weight: float) -> None:
    assert len(lines) == 2
    trained = [r for r in lines if r["nll"] is not None and r["nll"] > 0]
    assert trained, "no step trained anything"
    for r in trained:  # the recipe's weight reached compute(): loss = weight · nll, not 1 · nll
        assert r["loss"] == pytest.approx(weight * r["nll"], rel=1e-5)
        assert r["grad_norm"] > 0


def test_new_objective_is_one_file(tiny_demo_assets, tmp_path):
    # 1. The user's own file, named in the recipe as `file.py:Name`, with its table [Name] beside it.
    user_file = tmp_path / "my_objectives.py"
    user_file.write_text(OBJECTIVE.format(register_import="", decorator=""))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text((REPO / "recipes" / "tiny.toml").read_text().replace('objective = "intro"', f'objective = "{user_file}:WeightedNll"')
                      + "\n[WeightedNll]\nweight = 0.5\n")
    _check(_train(recipe, tmp_path / "user"), weight=0.5)
    saved = (tmp_path / "user" / "new" / "config.toml").read_text()
    assert "[WeightedNll]\nweight = 0.5" in saved  # the run's config keeps the user's table

    # 2. One file dropped into a copy of the package, registered by name; nothing else of the copy changed.
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "intro_lite", copy / "intro_lite", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "intro_lite.toml", copy / "intro_lite.toml")
    (copy / "intro_lite" / "objectives" / "weighted_nll.py").write_text(
        OBJECTIVE.format(register_import=", register", decorator='@register("weighted_nll")\n'))
    recipe = tmp_path / "in_package.toml"
    recipe.write_text((REPO / "recipes" / "tiny.toml").read_text().replace('objective = "intro"', 'objective = "weighted_nll"')
                      + "\n[weighted_nll]\nweight = 2.0\n")
    # Run from the copy: `python -m` puts the working directory first on sys.path, ahead of the install.
    _check(_train(recipe, tmp_path / "package", cwd=copy), weight=2.0)


def test_a_broken_user_objective_is_one_line(tmp_path):
    from intro_lite.config import ConfigError, load_config

    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_module_here\n")
    with pytest.raises(ConfigError, match=r"bad\.py:Thing.*ModuleNotFoundError: No module named 'no_such_module_here'"):
        load_config("recipes/tiny.toml", [f'objective="{bad}:Thing"'])
    with pytest.raises(ConfigError, match="file not found"):
        load_config("recipes/tiny.toml", [f'objective="{tmp_path}/missing.py:Thing"'])
    plain = tmp_path / "plain.py"
    plain.write_text("class Thing:\n    pass\n")
    with pytest.raises(ConfigError, match="no class 'Thing' subclassing"):
        load_config("recipes/tiny.toml", [f'objective="{plain}:Thing"'])
