"""The end-of-run table: held-out accuracy with its standard error, rollout accuracy smoothed over
a window of steps (never one step's draw)."""

import json

from intro_lite.summary import print_summary as _print_summary


def test_summary_smooths_rollouts_and_gives_standard_errors(tmp_path, capsys):
    accs = [0.0, 1.0] * 10  # one step's figure alone swings 0 <-> 1
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i + 1, "rollout_accuracy": a, "mean_length": 10.0}) + "\n" for i, a in enumerate(accs)))
    (tmp_path / "eval_summary.json").write_text(json.dumps({
        "before": {"accuracy": 0.25, "mean_length": 40.0, "n_problems": 1000, "k": 1},
        "after": {"accuracy": 0.40, "mean_length": 30.0, "n_problems": 1000, "k": 1}}))
    _print_summary(tmp_path)
    out = capsys.readouterr().out
    assert "first step" not in out and "last step" not in out
    assert "rollouts, first 5 steps" in out and "0.400" in out  # mean of [0,1,0,1,0]
    assert "rollouts, last 5 steps" in out and "0.600" in out  # mean of [1,0,1,0,1]
    assert "0.250 ± 0.014" in out and "0.400 ± 0.015" in out  # sqrt(.25*.75/1000), sqrt(.4*.6/1000)
    assert "+0.150 ± 0.021" in out
