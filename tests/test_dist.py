"""Data parallel (docs/scale.md) on CPU with gloo: 2 ranks under torchrun against one process."""

import os
import subprocess
import sys

import pytest
import torch

from dist_step_cases import CASES, run

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
    return run(str(tiny_assets.model_dir))


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_train_step_on_two_ranks_equals_one_process(two_ranks, one_process, case):
    loss, grad_norm, stats, params, n_rows, stats_1 = one_process[case]
    shares = [rank[case][4] for rank in two_ranks]
    assert sum(shares) == n_rows > 0
    if case == "intro-idle":
        assert shares[1] == 0  # rank 1 kept nothing, yet joined every collective
    for rank in two_ranks:  # every rank logs the global figures and holds the same adapter
        r_loss, r_norm, r_stats, r_params, _, r_stats_1 = rank[case]
        assert r_loss == pytest.approx(loss, rel=1e-6, abs=1e-9)
        assert r_norm == pytest.approx(grad_norm, rel=1e-6)
        assert r_stats.keys() == stats.keys()
        for k in stats:
            if k.startswith("n_"):  # counts add up whatever the split
                assert r_stats[k] == stats[k], k
            assert r_stats_1[k] == pytest.approx(stats_1[k], rel=1e-6, abs=1e-9), k
        for a, b in zip(r_params, params):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert grad_norm > 0
    for a, b in zip(two_ranks[0][case][3], two_ranks[1][case][3]):
        assert torch.equal(a, b)  # bit-identical across ranks: the same summed gradient
