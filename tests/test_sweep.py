"""`intro-lite sweep`: sweep-file checks, the toy-smoke sweep end to end, skip/resume, a failing cell, the report."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from intro_lite import sweep as sw
from intro_lite.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "sweeps" / "toy-smoke.toml"


def write_sweep(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("RECIPE", str(REPO / "recipes" / "tiny.toml")).replace("OUT", str(tmp_path / "out")))
    return path


BASE = '''recipe = "RECIPE"
output_dir = "OUT"
[set]
"model.name_or_path" = "tiny-test"
"data.source" = "tiny-test"
[grid]
objective = ["sft", "intro"]
[budget]
steps = 1
'''


@pytest.mark.parametrize("text, message", [
    ("colour = 1\n" + BASE, "unknown key 'colour'"),
    (BASE.replace('recipe = "RECIPE"\n', ""), "missing key 'recipe'"),
    (BASE.replace("steps = 1", ""), "[budget] needs exactly one of"),
    (BASE + '[eval]\nsauce = "tiny"\n', "unknown key 'eval.sauce'"),
    (BASE.replace('objective = ["sft", "intro"]', 'objective = ["sft", "intro"]\n"train.lrr" = [1e-4]'),
     "unknown key 'train.lrr'"),
    (BASE.replace('objective = ["sft", "intro"]', 'objective = ["sft", "nope"]'), "cell objective=nope"),
    (BASE.replace('objective = ["sft", "intro"]', "seed = []"), "grid.seed must be a non-empty list"),
    (BASE.replace('objective = ["sft", "intro"]', '"train.steps" = [1, 2]'), "grid.steps is not allowed"),
    ("recipe = [", "malformed TOML"),
])
def test_bad_sweep_files_fail_with_one_line_naming_the_problem(tmp_path, text, message):
    path = write_sweep(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        sw.load_sweep(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written before the file is known good


def test_grid_cells_and_overrides(tmp_path):
    path = write_sweep(tmp_path, BASE.replace('objective = ["sft", "intro"]',
                                              'objective = ["grpo", "intro"]\nseed = [0, 1]\nintro.n_candidates = [1, "all"]'))
    sweep = sw.load_sweep(path)
    cells = sw.cells(sweep)
    assert len(cells) == 8 and len({c.name for c in cells}) == 8
    assert cells[0].name == "objective=grpo,seed=0,n_candidates=1" and cells[0].method == "grpo n_candidates=1"
    cfg = sw.cell_config(sweep, cells[-1])
    assert (cfg.objective, cfg.seed, cfg.intro.n_candidates, cfg.train.steps) == ("intro", 1, "all", 1)
    assert cfg.run_dir == tmp_path / "out" / sweep.name / "cells" / cells[-1].name
    assert cfg.lora.init_adapter == ""  # no [start]: cells begin from the base model


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tiny_assets):
    """The shipped toy-smoke sweep, run once into a temp dir (2 methods x 2 seeds from a 2-step SFT start)."""
    tmp = tmp_path_factory.mktemp("sweep")
    text = SMOKE.read_text().replace('recipe = "../tiny.toml"', f'recipe = "{REPO / "recipes" / "tiny.toml"}"')
    text = text.replace('output_dir = "runs/sweeps"', f'output_dir = "{tmp}"')
    path = tmp / "toy-smoke.toml"
    path.write_text(text)
    sweep = sw.load_sweep(path)
    lines: list[str] = []
    sw.run_sweep(sweep, say=lines.append)
    report = sw.report(sweep, command="intro-lite sweep toy-smoke.toml")
    return sweep, lines, report


@pytest.mark.slow
def test_toy_smoke_sweep_runs_every_cell_from_the_shared_start(smoke):
    sweep, lines, report = smoke
    assert [line.split(":")[0] for line in lines if "done in" in line] == [
        "[1/5] start", "[2/5] objective=sft,seed=0", "[3/5] objective=sft,seed=1",
        "[4/5] objective=intro,seed=0", "[5/5] objective=intro,seed=1"]
    start_after = [json.loads(x) for x in (sweep.dir / "start" / "eval.jsonl").read_text().splitlines()][-1]
    for cell in sw.cells(sweep):
        run = sweep.dir / "cells" / cell.name
        cfg = load_config(run / "config.toml")
        assert cfg.lora.init_adapter == str((sweep.dir / "start" / "final").resolve())
        assert (cfg.objective, cfg.seed, cfg.train.steps) == (cell.values["objective"], cell.values["seed"], 2)
        evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals] == [0, 1, 2]  # eval.every = 1
        # Same start adapter and the same eval seed: every cell's step-0 score is the start's final score.
        assert (evals[0]["accuracy"], evals[0]["mean_length"]) == (start_after["accuracy"], start_after["mean_length"])
        assert (run / "DONE").exists() and (run / "final" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_report_has_the_table_and_the_plots(smoke):
    sweep, _, report = smoke
    text = report.read_text()
    assert "| sft | 2/2 |" in text and "| intro | 2/2 |" in text
    assert "intro-lite sweep toy-smoke.toml" in text and "torch" in text
    for png in ("accuracy_vs_step.png", "length_vs_step.png"):
        assert f"]({png})" in text
        assert (sweep.dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((sweep.dir / "results.json").read_text())
    lengths = {m["method"]: m["len_mean"] for m in results["methods"]}
    cells = {c["name"]: c for c in results["cells"]}
    for method in ("sft", "intro"):
        finals = [cells[f"objective={method},seed={s}"]["evals"][-1]["mean_length"] for s in (0, 1)]
        assert lengths[method] == pytest.approx(sum(finals) / 2)
    # `--report DIR` re-draws the same table from the sweep's own copy of its file.
    again = sw.report(sw.open_sweep_dir(sweep.dir))
    assert again.read_text().split("| method")[1].split("\n\n")[0] == text.split("| method")[1].split("\n\n")[0]


@pytest.mark.slow
def test_rerun_skips_finished_cells_and_resumes_an_interrupted_one(smoke):
    sweep, _, _ = smoke
    victim = sweep.dir / "cells" / "objective=intro,seed=1"
    done_metrics = (victim / "metrics.jsonl").read_text()
    # Interrupted after its step-1 checkpoint: no DONE, no step-2 line, no final eval.
    (victim / "DONE").unlink()
    shutil.rmtree(victim / "checkpoints" / "step-2")
    (victim / "metrics.jsonl").write_text(done_metrics.splitlines(keepends=True)[0])
    stamps = {c.name: (sweep.dir / "cells" / c.name / "DONE").stat().st_mtime_ns
              for c in sw.cells(sweep) if c.name != victim.name}
    lines: list[str] = []
    sw.run_sweep(sweep, say=lines.append)
    assert sum("skipped" in line for line in lines) == 4  # start + 3 finished cells
    assert any(victim.name in line and "resuming" in line for line in lines)
    assert (victim / "DONE").exists()
    for name, stamp in stamps.items():
        assert (sweep.dir / "cells" / name / "DONE").stat().st_mtime_ns == stamp
    # Resumed from step 1 with its RNG and data cursor: step 2 is the same as in the first run.
    redo = [json.loads(x) for x in (victim / "metrics.jsonl").read_text().splitlines()]
    first = [json.loads(x) for x in done_metrics.splitlines()]
    assert [r["step"] for r in redo] == [1, 2]
    for key in ("loss", "rollout_accuracy", "mean_length", "grad_norm"):
        assert redo[1][key] == pytest.approx(first[1][key], abs=1e-6)


@pytest.mark.slow
def test_a_failing_cell_is_reported_and_the_others_still_run(tmp_path, tiny_assets):
    # Level 99 does not exist: that cell's dataset is empty after filtering, which only shows at run time.
    text = BASE.replace('objective = ["sft", "intro"]', '"data.levels" = [[99], [2]]')
    path = write_sweep(tmp_path, text.replace("[set]\n", '[set]\n"train.prompts_per_step" = 2\n"rollout.max_new_tokens" = 8\n'))
    sweep = sw.load_sweep(path)
    lines: list[str] = []
    sw.run_sweep(sweep, say=lines.append)
    bad, good = (sweep.dir / "cells" / c.name for c in sw.cells(sweep))
    assert (bad / "FAILED").exists() and not (bad / "DONE").exists()
    assert "no problems left after filtering" in (bad / "FAILED").read_text().strip().splitlines()[-1]
    assert (good / "DONE").exists()
    assert any("FAILED" in line and "levels=[99]" in line for line in lines)
    text = sw.report(sweep).read_text()
    assert "| levels=[99] | 0/1 |" in text and "failed: " in text


def test_init_adapter_loads_the_saved_weights_and_rejects_a_mismatch(tmp_path, tiny_assets):
    from intro_lite.policy import load_policy, save_adapter

    cfg = load_config("recipes/tiny.toml", ["model.name_or_path=tiny-test", "model.quantization=none"])
    model, _ = load_policy(cfg, str(tiny_assets.model_dir))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    saved = save_adapter(model, tmp_path / "a")
    started, _ = load_policy(load_config("recipes/tiny.toml", ["model.name_or_path=tiny-test", "model.quantization=none",
                                                                f'lora.init_adapter="{saved}"']), str(tiny_assets.model_dir))
    want = {n: p for n, p in model.named_parameters() if p.requires_grad}
    got = {n: p for n, p in started.named_parameters() if p.requires_grad}
    assert want.keys() == got.keys() and all(torch.equal(want[n], got[n]) for n in want)
    with pytest.raises(ConfigError, match=r"lora.init_adapter: .* has shape \(16, 128\), this model needs \(8, 128\) \(different rank"):
        load_policy(load_config("recipes/tiny.toml", ["model.name_or_path=tiny-test", "lora.rank=8",
                                                      f'lora.init_adapter="{saved}"']), str(tiny_assets.model_dir))


@pytest.mark.slow
def test_rollout_token_budget_stops_the_run_and_still_finishes_it(tmp_path, tiny_assets):
    from intro_lite.train import train

    text = BASE.replace("steps = 1", "rollout_tokens = 20").replace("[set]\n", '[set]\n"train.prompts_per_step" = 2\n'
                                                                      '"rollout.max_new_tokens" = 8\n"eval.source" = "tiny-test"\n'
                                                                      '"eval.limit" = 4\n"eval.max_new_tokens" = 8\n')
    sweep = sw.load_sweep(write_sweep(tmp_path, text))
    cfg = sw.cell_config(sweep, sw.cells(sweep)[1])
    recipe_steps = load_config("recipes/tiny.toml").train.steps  # a token budget leaves the recipe's steps
    assert (cfg.train.max_rollout_tokens, cfg.train.steps) == (20, recipe_steps)
    run = train(cfg, progress=False)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # 2 prompts x G 4 x at most 8 tokens = at most 64 tokens a step: the budget of 20 is spent within 3 steps.
    assert 1 <= len(metrics) <= 3 and metrics[-1]["rollout_tokens_total"] >= 20
    assert all(m["rollout_tokens_total"] < 20 for m in metrics[:-1])
    evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [(e["when"], e["step"]) for e in evals] == [("before", 0), ("after", len(metrics))]
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert (run / "checkpoints" / f"step-{len(metrics)}" / "COMPLETE").exists()


def test_plot_draws_accuracy_vs_a_grid_key_with_a_word_among_numbers(tmp_path):
    """n_candidates = [1, 5, "all"]: evenly spaced categories, not skipped; a rollouts axis when cells agree."""
    from intro_lite.sweep.results import CellResult, plot, rollouts_per_step

    sweep = sw.Sweep(file=tmp_path / "s.toml", recipe=tmp_path / "r.toml", name="s", output_dir=tmp_path, overrides={},
                     grid={"intro.n_candidates": [1, 5, "all"], "seed": [0]}, start=None, budget={}, eval={}, dir=tmp_path)
    results = []
    for n, acc in ((1, 0.5), (5, 0.4), ("all", 0.1)):
        name = f"n={n}"
        (tmp_path / "cells" / name).mkdir(parents=True)
        (tmp_path / "cells" / name / "config.toml").write_text("[train]\nprompts_per_step = 16\n[rollout]\ngroup_size = 4\n")
        results.append(CellResult(name, "intro", {"intro.n_candidates": n, "seed": 0}, "done",
                                  evals=[{"when": "before", "step": 0, "accuracy": 0.3, "mean_length": 28.0},
                                         {"when": "after", "step": 50, "accuracy": acc, "mean_length": 27.0}]))
    assert rollouts_per_step(sweep, results) == 64
    drawn = dict((f, t) for t, f in plot(sweep, results, 30.0, 28.0))
    assert "accuracy_vs_n_candidates.png" in drawn and "accuracy_vs_step.png" in drawn
    assert (tmp_path / "accuracy_vs_n_candidates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
