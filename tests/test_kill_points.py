"""SIGKILL at random named points of a tiny run (inside a checkpoint write, an eval write, a metrics
write, an adapter push, after a step), each followed by `--resume`; and checkpoints corrupted on disk.
Every resumed run must end with the uninterrupted run's final adapter, byte for byte, and leave no
temporary files. Test preset with objective = sft (see tests/test_reliability.py for why)."""

import random

import pytest
from test_reliability import TEST_PRESET, no_partial_files
from test_resume import metrics, run_cli

pytestmark = pytest.mark.slow

STEPS = 5
# Checkpoint every step (two kept), score 2 held-out problems before, at steps 2 and 4, and after.
RUN = (*TEST_PRESET, "--set", f"train.steps={STEPS}", "--set", "train.checkpoint_every=1", "--set", "eval.source=tiny-test",
       "--set", "eval.limit=2", "--set", "eval.max_new_tokens=16", "--set", "eval.every=2")
# Where each point can fire: (point, step). eval fires at 0 (before), the periodic steps and the last (after).
CANDIDATES = ([("adapter_push", s) for s in range(0, STEPS + 1)] + [("metrics", s) for s in range(1, STEPS + 1)]
              + [("eval", s) for s in (0, 2, 4, STEPS)] + [("checkpoint", s) for s in range(1, STEPS + 1)]
              + [("after_step", s) for s in range(1, STEPS + 1)])
ORDER = ["adapter_push", "metrics", "eval", "checkpoint", "after_step"]  # within a step (the before-eval follows push 0)


def pick_points(seed: int, n: int = 5) -> list[tuple[str, int]]:
    """One point of each kind plus one more, at distinct steps, in the order a run reaches them
    (so each resumed run, which starts at its last checkpoint, still reaches the next point)."""
    rng = random.Random(seed)
    while True:
        kinds = ["checkpoint", "eval", "after_step", "adapter_push", rng.choice(["metrics", "checkpoint", "after_step"])]
        points = [rng.choice([c for c in CANDIDATES if c[0] == k]) for k in kinds]
        if len({s for _, s in points}) == n:
            return sorted(points, key=lambda p: (p[1], ORDER.index(p[0])))


def final_bytes(run_dir):
    return (run_dir / "final" / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def reference(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    out = run_cli(root, "ref", *RUN)
    assert out.returncode == 0, out.stderr[-2000:]
    return root / "ref"


def test_kill_at_five_random_points_then_resume(reference, tmp_path, monkeypatch):
    points = pick_points(seed=14)
    kinds = {k for k, _ in points}
    assert {"checkpoint", "eval", "after_step", "adapter_push"} <= kinds and len(points) == 5
    for i, (point, step) in enumerate(points):
        monkeypatch.setenv("INTRO_LITE_FAULT_AT", f"{point}:{step}")
        out = run_cli(tmp_path, "cut", *RUN, resume=i > 0)
        assert out.returncode == -9, (point, step, out.stderr[-2000:])
    monkeypatch.delenv("INTRO_LITE_FAULT_AT")
    out = run_cli(tmp_path, "cut", *RUN, resume=True)
    assert out.returncode == 0, (points, out.stderr[-2000:])
    run = tmp_path / "cut"
    assert [r["step"] for r in metrics(run / "metrics.jsonl")] == list(range(1, STEPS + 1)), points
    assert [(r["when"], r["step"]) for r in metrics(run / "eval.jsonl")] == \
        [("before", 0), ("step-2", 2), ("step-4", 4), ("after", STEPS)], points
    assert final_bytes(run) == final_bytes(reference), points
    assert no_partial_files(run) == [] and not list(run.rglob(".step-*")), points


def test_corrupt_checkpoints_are_skipped_with_one_line_each(reference, tmp_path, monkeypatch):
    # Killed after step 4 is logged, all checkpoints kept: step-1..4. Truncate step-4's adapter and
    # step-2's trainer state, give step-3 an older version's COMPLETE marker (not a manifest), and tear
    # metrics.jsonl's last line: the resume must fall back to step-1 and say why, one line each.
    keep = (*RUN, "--set", "train.keep_checkpoints=4")
    monkeypatch.setenv("INTRO_LITE_FAULT_AT", "after_step:4")
    assert run_cli(tmp_path, "bad", *keep).returncode == -9
    run, ck = tmp_path / "bad", tmp_path / "bad" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step-1", "step-2", "step-3", "step-4"]
    weights, state = ck / "step-4" / "adapter" / "adapter_model.safetensors", ck / "step-2" / "trainer_state.pt"
    weights_size, state_size = weights.stat().st_size, state.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])
    state.write_bytes(state.read_bytes()[:-10])
    (ck / "step-3" / "COMPLETE").write_text("3\n")
    torn = '{"step": 5, "lr"'
    with open(run / "metrics.jsonl", "a") as f:
        f.write(torn)
    monkeypatch.delenv("INTRO_LITE_FAULT_AT")
    out = run_cli(tmp_path, "bad", *keep, resume=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: skipped checkpoint {ck / 'step-4'}: adapter/adapter_model.safetensors has 100 bytes, "
        f"{weights_size} were written; falling back to an older one",
        f"warning: skipped checkpoint {ck / 'step-3'}: COMPLETE is not a manifest; falling back to an older one",
        f"warning: skipped checkpoint {ck / 'step-2'}: trainer_state.pt has {state_size - 10} bytes, "
        f"{state_size} were written; falling back to an older one",
        f"warning: {run / 'metrics.jsonl'}: dropped a torn last line ({len(torn)} characters)",
    ], out.stderr[-3000:]
    assert (run / "warnings.log").read_text().splitlines() == [w.removeprefix("warning: ") for w in warnings]
    assert [r["step"] for r in metrics(run / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert final_bytes(run) == final_bytes(reference)
    assert no_partial_files(run) == []
