"""`intro-lite probe`: its statistics against hand-computed values, and the command on the test preset."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from intro_lite.probe.stats import (Thresholds, last_number_before_answer, masked_means, position_stats, posterior_check,
                                    relative_deciles, same_number, spearman, token_classes, verdict)

LN2 = math.log(2)


def test_position_stats_by_hand():
    # Identity LM head: the logits are the hidden states, so p and q are what we write.
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.5, 0.25])
    out = position_stats(p.log()[None], q.log()[None], torch.eye(3), torch.tensor([1]), eos_id=2, top_k=2)
    # KL(q‖p) = .25 ln(.25/.5) + .5 ln(.5/.25) = ln2/4; H(p) = .5 ln2 + 2·.25 ln4 = 1.5 ln2; TV = ½(.25+.25)
    assert out["kl"].item() == pytest.approx(LN2 / 4, abs=1e-6)
    assert out["entropy"].item() == pytest.approx(1.5 * LN2, abs=1e-6)
    assert out["tv"].item() == pytest.approx(0.25, abs=1e-6)
    assert out["log_w"].item() == pytest.approx(LN2, abs=1e-6)  # own token 1: q/p = 2
    assert out["logp_eos"].item() == pytest.approx(math.log(0.25)) and out["logq_eos"].item() == pytest.approx(math.log(0.25))
    assert out["top_ids"][0, 0].item() == 0 and out["top_logq"][0, 0].item() == pytest.approx(math.log(0.25))
    clipped = position_stats(p.log()[None], q.log()[None], torch.eye(3), torch.tensor([1]), eos_id=2, clip_max=1.5)
    assert clipped["log_w"].item() == pytest.approx(math.log(1.5))  # w = clip(q/p, 0, C)
    assert position_stats(p.log()[None], q.log()[None], torch.eye(3), torch.tensor([0]), eos_id=2)["log_w"].item() \
        == pytest.approx(-LN2)


def test_position_stats_chunks_agree_and_keep_row_order():
    g = torch.Generator().manual_seed(0)
    h_p, h_q, W = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g), torch.randn(11, 5, generator=g)
    own = torch.randint(0, 11, (7,), generator=g)
    a = position_stats(h_p, h_q, W, own, eos_id=3, chunk_size=2)
    b = position_stats(h_p, h_q, W, own, eos_id=3, chunk_size=100)
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6), k
    logp, logq = torch.log_softmax(h_p @ W.T, 1), torch.log_softmax(h_q @ W.T, 1)
    assert torch.allclose(a["kl"], (logq.exp() * (logq - logp)).sum(1), atol=1e-6)
    assert torch.allclose(a["tv"], 0.5 * (logq.exp() - logp.exp()).abs().sum(1), atol=1e-6)


def test_token_classes_answer_final_value_rest():
    pieces = ["7", "+", "1", "7", "=", "2", "4", ".", " The", " answer", " is", " \\", "boxed", "{", "2", "4", "}", ".", "<eos>"]
    codes = token_classes(pieces).tolist()
    # the last marker is "\boxed" (inside " \\"); the final value is "24" before it; "The answer is" is rest
    assert codes == [0] * 5 + [1, 1] + [0] * 4 + [2] * 8
    assert token_classes(["1", "=2", "4."]).tolist() == [0, 0, 0]  # no marker: everything is rest
    # every spelling of the final value before the answer is "final value", other numbers are not
    verbose = ["We", " gives", " 4", "7", ".", " gives", " 4", "6", ".", " So", " is", " 4", "6", ".", " answer is", " 4", "6"]
    assert token_classes(verbose).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 2, 2, 2]
    # a piece that holds the number with other text counts as final value; marker inside a piece
    assert token_classes(["x", "=42", ". answer is", " 42"]).tolist() == [0, 1, 2, 2]


def test_last_number_before_answer_tells_derived_from_copied():
    derived = "We start with 7. First, we add 17 to 7, which gives 24. So the result is 24. The answer is \\boxed{24}."
    copied = "7+17=24. 24*9=215. The answer is \\boxed{216}."
    assert last_number_before_answer(derived) == "24"
    assert last_number_before_answer(copied) == "215" and not same_number("215", "216")
    assert last_number_before_answer("no numbers \\boxed{3}") is None
    assert same_number("24.0", "24") and same_number("-3", " -3") and same_number("1000", "1,000")
    assert not same_number(None, "3") and not same_number("2", "\\frac{1}{2}")


def test_relative_deciles_and_masked_means():
    assert relative_deciles([5, 10]).tolist() == [0, 2, 4, 6, 8] + list(range(10))
    v = {"kl": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    assert masked_means(v, torch.tensor([True, False, True, False])) == {"kl": 2.0, "n": 2}
    assert masked_means(v, torch.zeros(4, dtype=torch.bool)) == {"kl": None, "n": 0}


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 41]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their mean rank: ranks (0, 1.5, 1.5, 3) vs (0, 1, 2, 3) -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None


def test_posterior_check_by_hand():
    # One prefix, two candidates: p = (.6, .2) (mass .8), q = (.3, .5); 8 of 8 continuations after the first
    # succeed, 0 of 8 after the second; add-0.5 smoothing.
    logp, logq = torch.tensor([[0.6, 0.2]]).log(), torch.tensor([[0.3, 0.5]]).log()
    out = posterior_check(logp, logq, torch.tensor([[8, 0]]), 8, alpha=0.5)
    p_hat = [8.5 / 9, 0.5 / 9]
    p_y = 0.75 * p_hat[0] + 0.25 * p_hat[1]
    assert out["log_w_mc"][0] == pytest.approx([math.log(p_hat[0] / p_y), math.log(p_hat[1] / p_y)])
    assert out["log_w"][0] == pytest.approx([math.log(0.5), math.log(2.5)])
    assert out["spearman_pooled"] == pytest.approx(-1.0) and out["spearman_within_mean"] == pytest.approx(-1.0)
    post = [0.75 * p_hat[0] / p_y, 0.25 * p_hat[1] / p_y]
    kl = lambda a: sum(x * math.log(x / y) for x, y in zip(a, post))  # noqa: E731
    assert out["kl_teacher_to_mc_posterior"] == pytest.approx(kl([0.375, 0.625]))
    assert out["kl_policy_to_mc_posterior"] == pytest.approx(kl([0.75, 0.25]))
    assert out["candidate_mass_p"] == pytest.approx(0.8) and out["n_pairs"] == 2
    # A teacher that favours the token that succeeds is nearer the posterior than the policy, rank-correlated.
    good = posterior_check(logp, torch.tensor([[0.7, 0.1]]).log(), torch.tensor([[8, 0]]), 8)
    assert good["spearman_pooled"] == pytest.approx(1.0)
    assert good["kl_teacher_to_mc_posterior"] < good["kl_policy_to_mc_posterior"]


def test_verdict_each_outcome():
    t = Thresholds()
    label, why = verdict(0.3, 1.0, 0.10, 0.5, 32, t)
    assert label == "signal" and len(why) == 2
    assert verdict(0.0, 1.0, 0.10, 0.5, 32, t)[0] == "misleading"  # hinted accuracy at plain: at or below
    label, why = verdict(-0.1, 0.5, 0.10, 0.5, 32, t)
    assert label == "misleading" and len(why) == 2 and "EOS" in why[1]
    assert verdict(0.3, 0.85, 0.10, 0.5, 32, t)[0] == "misleading"  # q favours continuing where rationales end
    assert verdict(0.3, None, 0.10, 0.5, 32, t)[0] == "signal"  # no ends measured: no EOS alarm
    assert verdict(0.3, 1.0, 0.01, 0.5, 32, t)[0] == "little signal"  # the teacher moves mass almost nowhere
    assert verdict(0.3, 1.0, 0.10, 0.1, 32, t)[0] == "little signal"  # its weights do not rank by success
    assert verdict(0.3, 1.0, 0.10, None, 0, t)[0] == "little signal"
    assert verdict(0.3, 1.0, 0.10, 0.9, 4, t)[0] == "little signal"  # too few pairs to trust the check
    assert verdict(0.3, 1.0, 0.10, 0.5, 32, Thresholds(rho=0.6))[0] == "little signal"
    assert verdict(0.05, 1.0, 0.10, 0.5, 32, Thresholds(hint_gain=0.1))[0] == "misleading"


@pytest.mark.slow
def test_probe_command_on_the_test_preset(tiny_assets, tmp_path):
    env = {**os.environ, "COLUMNS": "200", "VLLM_LOGGING_LEVEL": "ERROR"}
    cmd = [sys.executable, "-m", "intro_lite.cli", "probe", "recipes/tiny.toml", "--set", "model.name_or_path=tiny-test",
           "--set", "data.source=tiny-test", "--limit", "8", "--prefixes", "2", "--rollouts", "2",
           "--threshold", "rho=0.25", "--out", str(tmp_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert {"settings", "thresholds", "accuracy", "kept", "by_class", "by_decile", "kl_share", "uncertainty",
            "posterior_check", "misleading", "verdict", "seconds"} <= set(res)
    assert {"plain", "hinted", "hinted_reaching_y", "hinted_derived_frac"} <= set(res["accuracy"])
    assert res["accuracy"]["n_rollouts"] == 8 * 4 and res["thresholds"]["rho"] == 0.25
    assert sum(res["by_class"][c]["n"] for c in ("rest", "final_value", "answer")) == res["kept"]["positions"]
    assert res["verdict"]["label"] in ("signal", "little signal", "misleading")
    assert f"verdict: {res['verdict']['label']}" in out.stdout
    assert (tmp_path / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(cmd[:5] + ["--threshold", "nope=1"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--threshold nope: unknown" in bad.stderr
