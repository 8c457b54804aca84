"""What a run leaves besides checkpoints: TensorBoard scalars, samples.jsonl with InTRO's per-token w,
the `show` page, plots, alarms (train/runlog.py and its helpers)."""

import json
from html.parser import HTMLParser

import pytest

from intro_lite.config import ConfigError, load_config
from intro_lite.config.schema import AlarmsConfig
from intro_lite.train.alarms import Alarms


def record(step, **kw):
    base = {"step": step, "rollout_accuracy": 0.5, "truncated_fraction": 0.0, "grader_timeouts": 0, "reward_errors": 0,
            "w_mean": 1.2, "w_sq_mean": 2.0, "w_clipped_frac": 0.0, "n_tokens": 10.0, "entropy": 1.0, "adapter_version": step}
    return {**base, **kw}


def test_each_alarm_fires_on_its_metric_and_not_on_a_healthy_step():
    a = Alarms(AlarmsConfig(no_correct_steps=2), samples_per_step=16)
    assert a.check(record(1)) == []
    names = lambda r: [n for n, _ in a.check(r)]  # noqa: E731
    assert names(record(2, truncated_fraction=0.75)) == ["truncated"]
    assert names(record(3, rollout_accuracy=0.0)) == []  # one step without a correct rationale is not yet an alarm
    assert names(record(4, rollout_accuracy=0.0)) == ["no_correct"]
    assert names(record(5, grader_timeouts=1, reward_errors=2)) == ["grader_failures"]  # 3/16 > 0.1
    assert names(record(6, w_mean=1.0, w_sq_mean=1.0)) == ["w_collapsed"]
    assert names(record(7, w_clipped_frac=0.9)) == ["w_clipped"]
    assert names(record(8, adapter_version=7)) == ["adapter_stale"]
    assert names(record(9, entropy=0.001)) == ["entropy_collapse"]
    assert a.counts == {"truncated": 1, "no_correct": 1, "grader_failures": 1, "w_collapsed": 1, "w_clipped": 1,
                        "adapter_stale": 1, "entropy_collapse": 1}
    _, message = Alarms(AlarmsConfig(), 16).check(record(1, truncated_fraction=0.9))[0]
    assert "rollout.max_new_tokens" in message and "—" in message  # what happened, then the fix


def test_accuracy_drop_fires_on_a_falling_rolling_mean_not_on_one_bad_batch():
    a = Alarms(AlarmsConfig(accuracy_window=3, accuracy_drop=0.5), samples_per_step=64)
    fired = [[n for n, _ in a.check(record(i + 1, rollout_accuracy=acc))]
             for i, acc in enumerate([0.3, 0.3, 0.3, 0.0, 0.3, 0.3, 0.1, 0.1, 0.05, 0.05])]
    # one empty batch (step 4) moves the 3-step mean to 0.2, not below 0.5 x 0.3; the slide does from step 9 (0.083)
    assert [i + 1 for i, f in enumerate(fired) if "accuracy_drop" in f] == [9, 10]
    quiet = Alarms(AlarmsConfig(accuracy_drop=0.0), 16)  # 0 turns it off
    assert not any(quiet.check(record(i + 1, rollout_accuracy=acc)) for i, acc in enumerate([0.5] * 5 + [0.01] * 5))


def test_accuracy_drop_ignores_a_drop_within_the_noise_of_its_counts():
    # A user's model at 3-4% rollout accuracy, 64 rollouts a step, windows of 5: half of a best window of 4%
    # is 1.5 standard errors of the difference, noise (it fired on GRPO, which did not degrade); a
    # collapse from 30% to 2% is 9.7 SE.
    def fired(accuracies):
        a = Alarms(AlarmsConfig(accuracy_window=5, accuracy_drop=0.5), samples_per_step=64)
        return [i + 1 for i, acc in enumerate(accuracies) if "accuracy_drop" in [n for n, _ in a.check(record(i + 1, rollout_accuracy=acc))]]

    assert fired([0.04] * 5 + [0.02] * 5) == []
    assert fired([0.3] * 5 + [0.02] * 5) == [8, 9, 10]  # the window mean falls below 0.15 at step 8


def test_alarm_state_is_replayed_on_resume(tmp_path):
    from intro_lite.train.runlog import RunLog

    cfg = load_config(None, [f'output_dir="{tmp_path}"', 'name="r"', "alarms.accuracy_window=2"])
    cfg.run_dir.mkdir(parents=True)
    lines = [json.dumps(record(i + 1, rollout_accuracy=0.4)) for i in range(4)]
    (cfg.run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    log = RunLog(cfg, bar=None, tokenizer=None, problems=[], start=4)
    assert log.alarms.best_window == pytest.approx(0.4)  # so step 5's collapse is judged against steps 1-4
    assert [n for n, _ in log.alarms.check(record(5, rollout_accuracy=0.0))] == []  # mean (0.4 + 0) / 2 = 0.2, not < 0.2
    assert [n for n, _ in log.alarms.check(record(6, rollout_accuracy=0.0))] == ["accuracy_drop"]
    log.close()


def test_alarm_thresholds_are_ranged_config_keys():
    assert load_config(None, ["alarms.truncated_fraction=0.8"]).alarms.truncated_fraction == 0.8
    with pytest.raises(ConfigError, match=r"'alarms.truncated_fraction' must be in \[0, 1\]"):
        load_config(None, ["alarms.truncated_fraction=1.5"])


def test_missing_tracker_asked_for_is_one_line_error():
    pytest.importorskip("tensorboard")
    for tracker in ("wandb", "trackio"):
        try:
            __import__(tracker)
            continue
        except ImportError:
            pass
        with pytest.raises(ConfigError, match=rf"'log.{tracker}' = true but {tracker} is not installed"):
            load_config(None, [f"log.{tracker}=true"])


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.coloured, self.samples, self.external = [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and "w=" in (a.get("title") or ""):
            self.coloured.append(a)
        if tag == "div" and a.get("class") == "sample":
            self.samples += 1
        if tag in ("script", "link", "img") or (a.get("src") or "").startswith("http"):
            self.external.append(tag)


@pytest.mark.slow
def test_tiny_run_writes_tensorboard_samples_plots_and_show_page(tiny_assets, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from intro_lite.show import render
    from intro_lite.train import train

    rewards = tmp_path / "r.py"
    rewards.write_text("def fn(problem, completion):\n    return 1.0\n")  # every rollout 'correct': InTRO trains all
    cfg = load_config("recipes/tiny.toml", [
        "model.name_or_path=tiny-test", "data.source=tiny-test", "eval.source=tiny-test", "eval.limit=4",
        "eval.max_new_tokens=16", f'output_dir="{tmp_path}"', "train.steps=2", "train.prompts_per_step=2",
        "rollout.max_new_tokens=16", "train.checkpoint_every=0", f'reward="{rewards}:fn"', "log.tensorboard=true",
        "log.samples_every=2"])
    run = train(cfg, progress=False)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(r["alarms"], list) for r in metrics)

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    numeric = {k for k, v in metrics[0].items() if isinstance(v, (int, float)) and k != "step"}
    assert numeric <= tags and {"loss", "w_mean", "rollout_accuracy", "time_rollout"} <= tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]
    assert acc.Scalars("loss")[1].value == pytest.approx(metrics[1]["loss"], rel=1e-6)

    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2}  # step 1 always, then every 2
    trained = [s for s in samples if s["trained"]]
    assert trained and all(len(s["w"]) == len(s["tokens"]) == len(s["log_q_over_p"]) > 0 for s in trained)
    assert all(0 <= w <= cfg.intro.clip_max for s in trained for w in s["w"])

    pngs = {p.name for p in (run / "plots").iterdir()}
    assert {"rollout_accuracy.png", "heldout_accuracy.png", "loss.png", "grad_norm.png", "w_stats.png",
            "rationale_length.png", "time_per_phase.png"} <= pngs

    page, step = render(run, 2)
    parsed = Page()
    parsed.feed(page)
    assert step == 2 and parsed.samples == sum(s["step"] == 2 for s in samples)
    assert len(parsed.coloured) == sum(len(s["w"]) for s in trained if s["step"] == 2)
    assert all(a["style"].startswith("background:#") for a in parsed.coloured)
    assert parsed.external == []  # self-contained: no scripts, stylesheets or images to fetch
    with pytest.raises(ConfigError, match=r"--step 5: .* has steps 1, 2"):
        render(run, 5)


def fake_run(path, n=6, intro=True):
    path.mkdir(parents=True)
    lines = [{"step": s, "rollout_accuracy": 0.1 * s, "mean_length": 40.0 + s, "loss": 1.0 / s, "grad_norm": 0.5,
              "time_rollout": 1.0, "time_grading": 0.1, "time_forward": 0.5, "time_backward": 0.7, "time_sync": 0.2,
              **({"w_mean": 1.1, "w_sq_mean": 1.5, "w_clipped_frac": 0.01} if intro else {}), "alarms": []}
             for s in range(1, n + 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (path / "eval.jsonl").write_text(json.dumps({"when": "before", "step": 0, "accuracy": 0.2}) + "\n"
                                     + json.dumps({"when": "after", "step": n, "accuracy": 0.3}) + "\n")
    return path


def test_plot_cli_one_line_per_run_and_skips_empty_figures(tmp_path):
    from typer.testing import CliRunner

    from intro_lite.cli import app

    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", intro=False)
    res = CliRunner().invoke(app, ["plot", str(a), str(b), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    names = {p.name for p in (tmp_path / "cmp").iterdir()}
    assert names == {"rollout_accuracy.png", "heldout_accuracy.png", "rationale_length.png", "loss.png", "grad_norm.png",
                     "w_stats.png", "time_per_phase.png"}
    assert all((tmp_path / "cmp" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    assert CliRunner().invoke(app, ["plot", str(a), str(b)]).exit_code == 2  # several runs need --out
    res = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert res.exit_code == 2 and "no metrics.jsonl" in res.output
    c = fake_run(tmp_path / "c", intro=False)
    CliRunner().invoke(app, ["plot", str(c)])
    assert not (c / "plots" / "w_stats.png").exists()  # no w in a GRPO-like run: that figure is skipped


def test_show_cli_writes_a_page_and_names_a_missing_step(tmp_path):
    from typer.testing import CliRunner

    from intro_lite.cli import app

    run = fake_run(tmp_path / "r")
    sample = {"step": 3, "index": 0, "problem_id": "p1", "prompt": "1+1 <b>?</b>", "answer": "2", "completion": "1+1=2",
              "correct": True, "status": "ok", "reward": 1.0, "trained": True, "tokens": ["1+1", "=", "2"],
              "w": [0.5, 1.0, 4.0], "log_q_over_p": [-0.69, 0.0, 1.39]}
    (run / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    res = CliRunner().invoke(app, ["show", str(run), "--step", "3", "--out", str(tmp_path / "p.html")])
    assert res.exit_code == 0, res.output
    page = Page()
    page.feed((tmp_path / "p.html").read_text())
    assert [a["title"].split()[0] for a in page.coloured] == ["w=0.5", "w=1", "w=4"]
    backgrounds = [a["style"] for a in page.coloured]
    assert backgrounds[1] == "background:#ffffff" and backgrounds[0] != backgrounds[2]  # red below 1, blue above
    assert "<b>" not in (tmp_path / "p.html").read_text()  # the prompt is escaped
    res = CliRunner().invoke(app, ["show", str(run), "--step", "4"])
    assert res.exit_code == 2 and "has steps 3" in res.output


def test_a_resume_drops_the_samples_of_steps_it_re_runs(tmp_path):
    from intro_lite.train.runlog import drop_samples_after

    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"step": s, "index": 0}) + "\n" for s in (1, 10, 20)))
    drop_samples_after(path, 10)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 10]
    drop_samples_after(path, 0)  # died before its first checkpoint: starts again from step 0
    assert path.read_text() == ""
