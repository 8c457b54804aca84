"""The paper's other models: each recipe loads, renders as the paper does, and its header's doctor
memory estimate is the one the code computes today (from the public config numbers, no download)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from intro_lite.config import load_config
from intro_lite.doctor.architectures import ARCHITECTURES
from intro_lite.doctor.memory import estimate_memory, gpu_summary

REPO = Path(__file__).resolve().parent.parent
RECIPES = ["qwen2.5-3b", "qwen2.5-7b", "qwen3-4b", "qwen3-8b", "llama3.2-3b-instruct", "llama3.1-8b-instruct"]
# Published parameter counts (model cards), a check on the config numbers typed into architectures.py.
PARAMS_B = {"Qwen/Qwen2.5-1.5B": 1.54, "Qwen/Qwen2.5-3B": 3.09, "Qwen/Qwen2.5-7B": 7.61, "Qwen/Qwen3-4B-Base": 4.02,
            "Qwen/Qwen3-8B-Base": 8.19, "meta-llama/Llama-3.2-3B-Instruct": 3.21, "meta-llama/Llama-3.1-8B-Instruct": 8.03}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_with_the_papers_settings(name):
    cfg = load_config(REPO / "recipes" / f"{name}.toml")
    assert cfg.model.name_or_path in ARCHITECTURES
    assert (cfg.train.prompts_per_step, cfg.rollout.group_size, cfg.intro.n_candidates, cfg.intro.clip_max,
            cfg.data.levels, cfg.rollout.temperature) == (128, 4, 5, 200.0, [3, 4, 5], 1.0)
    assert cfg.data.chat_template is name.startswith("llama")  # Qwen: no template, as the paper; Llama instruct: its template


@pytest.mark.parametrize("name", RECIPES)
def test_header_memory_estimate_is_current(name):
    path = REPO / "recipes" / f"{name}.toml"
    cfg = load_config(path)
    header = [line[4:] for line in path.read_text().splitlines() if re.match(r"#   \d+ GB GPU:", line)]
    assert header == [gpu_summary(cfg, ARCHITECTURES[cfg.model.name_or_path], gb) for gb in (24, 80)]


@pytest.mark.parametrize("model", sorted(PARAMS_B))
def test_architecture_numbers_give_the_published_parameter_count(model):
    cfg = load_config(REPO / "recipes" / "qwen2.5-1.5b.toml")
    terms = estimate_memory(cfg, ARCHITECTURES[model], 80 * 10**9)
    params = terms[0][1] / 2  # vLLM's bf16 weights: 2 bytes per parameter
    assert params / 1e9 == pytest.approx(PARAMS_B[model], rel=0.02)


def test_script_prints_the_header_lines():
    out = subprocess.run([sys.executable, "scripts/recipe_memory.py", "recipes/qwen3-4b.toml"], cwd=REPO,
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("#   24 GB GPU: peak ~")
