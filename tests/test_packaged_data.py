"""The data travels with the project: a copy of the repository with no ../shared beside it, run from an
unrelated working directory and offline, loads the paper recipes' data and evaluates on the paper's
benchmarks (intro_lite/data/README.md)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """What a user's clone holds (the package, its defaults, the recipes), with nothing beside it."""
    root = tmp_path_factory.mktemp("user")
    repo = root / "intro-lite"
    shutil.copytree(REPO / "intro_lite", repo / "intro_lite", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "recipes", repo / "recipes")
    shutil.copy(REPO / "intro_lite.toml", repo / "intro_lite.toml")
    assert not (root / "shared").exists()
    (root / "elsewhere").mkdir()
    return repo


def run_there(clone: Path, args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "VLLM_LOGGING_LEVEL": "ERROR", "COLUMNS": "200"}
    return subprocess.run([sys.executable, *args], cwd=clone.parent / "elsewhere", env=env, capture_output=True,
                          text=True, timeout=timeout)


LOAD = """
import json, sys
from pathlib import Path
import intro_lite
from intro_lite.config import load_config
from intro_lite.data.benchmarks import load_benchmark
from intro_lite.data.problems import LoadReport, load_problems

clone = Path(sys.argv[1])
assert Path(intro_lite.__file__).resolve().is_relative_to(clone.resolve()), intro_lite.__file__
recipes = sorted(p.name for p in (clone / "recipes").glob("*.toml"))
for name in recipes:
    load_config(clone / "recipes" / name)  # validates data.source / exclude_ids_from
cfg = load_config(clone / "recipes" / "qwen2.5-1.5b.toml")
report = LoadReport()
problems = load_problems(cfg.data, report=report)
math500 = {p.id for p in load_benchmark("math500")}
print(json.dumps({"recipes": recipes, "source": cfg.data.source, "exclude": cfg.data.exclude_ids_from,
                  "kept": len(problems), "total": report.total, "no_gold": report.dropped_no_gold,
                  "math500": len(math500), "overlap": len(math500 & {p.id for p in problems})}))
"""


def test_a_clone_without_shared_loads_the_paper_recipes_data(clone):
    out = run_there(clone, ["-c", LOAD, str(clone)], timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "qwen2.5-1.5b.toml" in got["recipes"] and len(got["recipes"]) >= 8
    assert (got["source"], got["exclude"]) == ("math-l3-5", "math500")
    # 8,888 packaged (MATH train + test, levels 3-5, minus MATH500); 2 with an empty \boxed{} skipped.
    assert (got["total"], got["no_gold"], got["kept"]) == (8888, 2, 8886)
    assert got["math500"] == 500 and got["overlap"] == 0
    assert "shared" not in out.stderr


@pytest.mark.slow
def test_a_clone_without_shared_evaluates_the_paper_benchmarks_from_anywhere(clone, tiny_assets):
    out_dir = clone.parent / "eval-out"
    args = ["-m", "intro_lite.cli", "eval", "--model", "tiny-test", "--benchmarks", "paper", "--limit", "2",
            "--max-new-tokens", "8", "--out", str(out_dir)]
    out = run_there(clone, args, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((out_dir / "results.json").read_text())
    assert list(results["benchmarks"]) == ["math500", "minerva_math", "olympiadbench", "college_math", "amc23", "aime25"]
    assert all(b["n"] == 2 for b in results["benchmarks"].values())
    assert Path(results["config"]["data_dir"]).resolve() == (clone / "intro_lite" / "data" / "eval").resolve()
    assert len(results["results"]) == 6
