"""The position-chunked InTRO loss from hidden states equals the naive logits path."""

import pytest
import torch
import torch.nn.functional as F

from intro_lite.objectives import ObjectiveInputs, get_objective
from intro_lite.objectives.intro import (IntroConfig, draw_uniforms, intro_loss, intro_loss_from_hidden,
                                        inverse_cdf_draws)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _case(B=4, T=9, H=16, V=40, seed=0, dtype=torch.float32):
    g = _gen(seed)
    h = torch.randn(B, T, H, generator=g).to(dtype)
    hq = torch.randn(B, T, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) * 0.6).to(dtype)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[2] = 0  # an all-zero row: not counted in the mean over rows
    mask[0, :4] = 1
    return h, hq, weight, tokens, mask


def _naive(h, hq, weight, tokens, mask, **kw):
    """suffix_logits + intro_loss: logits in the model dtype, then float32."""
    h = h.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    logits = F.linear(h, w)
    posterior = F.linear(hq, weight)
    if logits.dtype != torch.float64:
        logits, posterior = logits.float(), posterior.float()
    loss, stats = intro_loss(logits, posterior, tokens, mask, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad, stats


def _chunked(h, hq, weight, tokens, mask, **kw):
    h = h.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    hq = hq.clone().requires_grad_(True)  # must receive nothing
    loss, stats = intro_loss_from_hidden(h, hq, w, tokens, mask, **kw)
    loss.backward()
    assert hq.grad is None
    return loss.detach(), h.grad, w.grad, stats


def _assert_same(a, b, *, rtol, atol):
    (la, gha, gwa, sa), (lb, ghb, gwb, sb) = a, b
    torch.testing.assert_close(lb.float(), la.float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(ghb.float(), gha.float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(gwb.float(), gwa.float(), rtol=rtol, atol=atol)
    assert gha.abs().max() > 1e-3 and gwa.abs().max() > 1e-3  # not a 0 == 0 comparison
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sb[k] == pytest.approx(sa[k], rel=rtol, abs=atol), k


@pytest.mark.parametrize("n", [1, 5, "all"])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
def test_chunked_equals_naive_fp32(n, chunk_size):
    h, hq, weight, tokens, mask = _case(seed=1)
    kw = dict(n_candidates=n, clip_max=2.0)  # small C: clipping happens
    naive = _naive(h, hq, weight, tokens, mask, generator=_gen(5), **kw)
    chunked = _chunked(h, hq, weight, tokens, mask, generator=_gen(5), chunk_size=chunk_size, **kw)
    _assert_same(naive, chunked, rtol=1e-5, atol=1e-6)
    assert 0 < naive[3]["w_clipped_frac"] < 1
    # The gradient never reaches rows/positions outside the mask.
    assert torch.all(chunked[1][mask == 0] == 0)


@pytest.mark.parametrize("n", [1, 5, "all"])
def test_chunked_equals_naive_fp64_tightly(n):
    h, hq, weight, tokens, mask = _case(B=3, T=11, V=23, seed=2, dtype=torch.float64)
    kw = dict(n_candidates=n, clip_max=3.0)
    naive = _naive(h, hq, weight, tokens, mask, generator=_gen(0), **kw)
    chunked = _chunked(h, hq, weight, tokens, mask, generator=_gen(0), chunk_size=5, **kw)
    _assert_same(naive, chunked, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [1, 5, "all"])
def test_chunked_equals_naive_bf16(n):
    h, hq, weight, tokens, mask = _case(seed=3, dtype=torch.bfloat16)
    kw = dict(n_candidates=n, clip_max=2.0)
    naive = _naive(h, hq, weight, tokens, mask, generator=_gen(1), **kw)
    chunked = _chunked(h, hq, weight, tokens, mask, generator=_gen(1), chunk_size=6, **kw)
    assert chunked[1].dtype == torch.bfloat16 and chunked[2].dtype == torch.bfloat16
    # bf16 gradients: one rounding of the [V, H] / [N, H] products apart (the weight's is summed over chunks).
    _assert_same(naive, chunked, rtol=2e-2, atol=2e-3)


def test_draws_are_the_naive_paths_draws():
    """Same generator → same candidates: with many candidates the loss pins the draws down, and
    another seed (other draws) gives a visibly different loss."""
    h, hq, weight, tokens, mask = _case(seed=4)
    kw = dict(n_candidates=3, clip_max=200.0)
    a = _naive(h, hq, weight, tokens, mask, generator=_gen(9), **kw)[0]
    b = _chunked(h, hq, weight, tokens, mask, generator=_gen(9), chunk_size=3, **kw)[0]
    c = _chunked(h, hq, weight, tokens, mask, generator=_gen(10), chunk_size=3, **kw)[0]
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert (a - c).abs() > 1e-3


def test_selected_rows_input_equals_padded_input():
    h, hq, weight, tokens, mask = _case(seed=5)
    kw = dict(n_candidates=5, clip_max=2.0)
    full = _chunked(h, hq, weight, tokens, mask, generator=_gen(2), chunk_size=4, **kw)
    sel = mask.bool()
    flat = _chunked(h[sel], hq[sel], weight, tokens, mask, generator=_gen(2), chunk_size=4, **kw)
    torch.testing.assert_close(flat[0], full[0])
    torch.testing.assert_close(flat[1], full[1][sel])
    torch.testing.assert_close(flat[2], full[2])
    assert flat[3] == full[3]
    with pytest.raises(ValueError, match="mask.sum"):
        intro_loss_from_hidden(h[sel][:-1], hq[sel][:-1], weight, tokens, mask)


def test_frozen_weight_gets_no_gradient():
    h, hq, weight, tokens, mask = _case(seed=6)
    leaf = h.clone().requires_grad_(True)
    loss, _ = intro_loss_from_hidden(leaf, hq, weight, tokens, mask, n_candidates="all", chunk_size=5)
    loss.backward()
    assert weight.grad is None and leaf.grad.abs().sum() > 0


def test_all_zero_mask_gives_connected_zero():
    h, hq, weight, tokens, _ = _case(seed=7)
    leaf = h.clone().requires_grad_(True)
    loss, stats = intro_loss_from_hidden(leaf, hq, weight, tokens, torch.zeros(tokens.shape), chunk_size=4)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(leaf.grad == 0)
    assert set(stats.values()) == {0.0}


def test_inverse_cdf_draws_follow_p():
    p = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    u = draw_uniforms(2, 40_001, _gen(0), device="cpu", dtype=torch.float64)
    draws = inverse_cdf_draws(p, u)
    freq = torch.stack([torch.bincount(d, minlength=4) for d in draws]).double() / draws.shape[1]
    sigma = (p * (1 - p) / draws.shape[1]).sqrt()
    assert torch.all((freq - p).abs() <= 5 * sigma + 1e-12)
    assert torch.all(freq[:, 1] == 0) and torch.all(draws[1] == 2)  # zero-probability tokens never drawn
    # Row-wise: a row's draws do not depend on the rows beside it.
    assert torch.equal(inverse_cdf_draws(p[1:], u[1:]), draws[1:])


def test_objective_uses_hidden_states_when_given():
    h, hq, weight, tokens, mask = _case(seed=8)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    objective = get_objective("intro")
    assert objective.config is IntroConfig
    # The default chunk size (128 > 0) asks for hidden states; 0 asks for full logits.
    assert objective.needs_for(objective.default_config()).hidden_states is True
    assert objective.needs_for(IntroConfig(logits_chunk_size=0)).hidden_states is False
    wide = IntroConfig(n_candidates=5, clip_max=200.0, logits_chunk_size=256)
    assert objective.needs_for(wide).hidden_states is True
    kw = dict(n_candidates=5, clip_max=2.0)
    via_logits = objective.compute(
        ObjectiveInputs(tokens, mask, F.linear(h, weight), F.linear(hq, weight), rewards=rewards),
        IntroConfig(logits_chunk_size=0, **kw), generator=_gen(3),
    )
    via_hidden = objective.compute(
        ObjectiveInputs(tokens, mask, None, rewards=rewards, policy_hidden=h, posterior_hidden=hq, lm_head_weight=weight),
        IntroConfig(logits_chunk_size=5, **kw), generator=_gen(3),
    )
    torch.testing.assert_close(via_hidden[0], via_logits[0], rtol=1e-5, atol=1e-6)
    assert via_hidden[1] == pytest.approx(via_logits[1], rel=1e-5)
    with pytest.raises(ValueError, match="lm_head_weight"):
        objective.compute(ObjectiveInputs(tokens, mask, None, policy_hidden=h, posterior_hidden=hq), None)


def test_bad_arguments():
    h, hq, weight, tokens, mask = _case(seed=9)
    with pytest.raises(ValueError, match="chunk_size"):
        intro_loss_from_hidden(h, hq, weight, tokens, mask, chunk_size=0)
    with pytest.raises(ValueError, match="hidden size"):
        intro_loss_from_hidden(h, hq, weight[:, :-1], tokens, mask)
    with pytest.raises(ValueError, match="n_candidates"):
        intro_loss_from_hidden(h, hq, weight, tokens, mask, n_candidates=0)
