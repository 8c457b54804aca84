import itertools
import math

import pytest
import torch

from intro_lite.objectives import Needs, ObjectiveInputs, available, get_objective
from intro_lite.objectives.intro import IntroConfig, intro_loss


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_case(B=2, T=3, V=5, seed=0, dtype=torch.float64):
    g = _gen(seed)
    policy = torch.randn(B, T, V, generator=g, dtype=dtype) * 1.5
    posterior = torch.randn(B, T, V, generator=g, dtype=dtype) * 1.5
    tokens = torch.randint(0, V, (B, T), generator=g)
    return policy, posterior, tokens


def _clipped_w(policy, posterior, clip_max):
    p, q = policy.softmax(-1), posterior.softmax(-1)
    return torch.clamp(q / p, max=clip_max), p


# 1. Large-n Monte Carlo gradient vs the estimator's exact expectation.
@pytest.mark.parametrize("n, replicas", [(3, 20_000), (20_000, 1)])
def test_sampled_gradient_matches_expectation(n, replicas):
    clip_max = 2.0
    policy, posterior, tokens = _random_case(seed=1)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    B, T, V = policy.shape
    w, p = _clipped_w(policy, posterior, clip_max)
    assert (posterior.softmax(-1) / p > clip_max).any(), "case must exercise clipping"

    # Identical copies of the batch: the loss averages them, so the gradient on the shared
    # leaf is the mean of `replicas` independent estimators.
    leaf = policy.clone().requires_grad_(True)
    expand = lambda x: x.unsqueeze(0).expand(replicas, *x.shape).reshape(replicas * B, *x.shape[1:])  # noqa: E731
    loss, _ = intro_loss(
        expand(leaf), expand(posterior), expand(tokens), expand(mask),
        n_candidates=n, clip_max=clip_max, generator=_gen(0),
    )
    loss.backward()

    # d(-J_z)/d logits_t = -1/(|z|·n) Σ_i w_i (e_{v_i} − p): exact mean and per-draw variance by enumeration.
    eye = torch.eye(V, dtype=policy.dtype)
    lengths = mask.sum(1, keepdim=True).unsqueeze(-1).to(policy.dtype)  # [B, 1, 1]
    x = w.unsqueeze(-1) * (eye - p.unsqueeze(-2))  # [B, T, v, k]: the draw v's contribution
    mean_draw = (p.unsqueeze(-1) * x).sum(-2)
    var_draw = (p.unsqueeze(-1) * x**2).sum(-2) - mean_draw**2
    own = x.gather(2, tokens[..., None, None].expand(B, T, 1, V)).squeeze(2)
    scale = mask.unsqueeze(-1) / (lengths * B)
    expected = -scale * ((n - 1) / n * mean_draw + own / n)
    sigma = scale * (var_draw * (n - 1) / replicas).sqrt() / n

    err = (leaf.grad - expected).abs()
    assert torch.all(err <= 5 * sigma + 1e-12), (err / sigma).max()
    assert torch.all(leaf.grad[1, 2] == 0)

    # Power: plausible wrong formulas are far outside the tolerance.
    unclipped = posterior.softmax(-1) / p
    x_unclipped = unclipped.unsqueeze(-1) * (eye - p.unsqueeze(-2))
    wrong_unclipped = -scale * ((n - 1) / n * (p.unsqueeze(-1) * x_unclipped).sum(-2) + own / n)
    assert (wrong_unclipped - expected).abs().max() > 20 * sigma.max()
    if n < 10:
        wrong_no_own = -scale * mean_draw  # own token treated like a draw from p
        assert (wrong_no_own - expected).abs().max() > 20 * sigma.max()


# 2. "all" equals the full-vocabulary sum, built by brute force.
def test_all_matches_brute_force_full_vocab():
    clip_max = 1.5
    policy, posterior, tokens = _random_case(B=3, T=4, V=6, seed=2)
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]])
    B, T, V = policy.shape

    leaf = policy.clone().requires_grad_(True)
    loss, stats = intro_loss(leaf, posterior, tokens, mask, n_candidates="all", clip_max=clip_max)
    (grad,) = torch.autograd.grad(loss, leaf)

    ref_leaf = policy.clone().requires_grad_(True)
    total, rows = 0.0, 0
    for b in range(B):
        positions = [t for t in range(T) if mask[b, t]]
        if not positions:
            continue
        rows += 1
        row = 0.0
        for t in positions:
            norm_p = sum(torch.exp(ref_leaf[b, t, u]) for u in range(V))
            norm_q = sum(math.exp(posterior[b, t, u].item()) for u in range(V))
            for v in range(V):
                p_v = torch.exp(ref_leaf[b, t, v]) / norm_p
                q_v = math.exp(posterior[b, t, v].item()) / norm_q
                coef = min(q_v, clip_max * p_v.item())
                row = row + coef * torch.log(p_v)
        total = total + row / len(positions)
    ref_loss = -total / rows
    (ref_grad,) = torch.autograd.grad(ref_loss, ref_leaf)

    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)
    assert 0 < stats["w_clipped_frac"] < 1
    assert stats["n_tokens"] == 6


# 3. The posterior pass is a fixed target.
@pytest.mark.parametrize("n", [5, "all"])
def test_no_gradient_reaches_posterior(n):
    policy, posterior, tokens = _random_case(seed=3, dtype=torch.float32)
    policy.requires_grad_(True)
    posterior.requires_grad_(True)
    loss, _ = intro_loss(policy, posterior, tokens, torch.ones_like(tokens), n_candidates=n, generator=_gen(0))
    loss.backward()
    assert policy.grad is not None and policy.grad.abs().sum() > 0
    assert posterior.grad is None or torch.all(posterior.grad == 0)


# 4. Whatever sits under mask 0 is never read.
@pytest.mark.parametrize("n", [5, "all"])
def test_masked_positions_change_nothing(n):
    policy, posterior, tokens = _random_case(B=3, T=5, V=7, seed=4, dtype=torch.float32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    off = mask == 0

    def run(policy, posterior, tokens, mask):
        leaf = policy.clone().requires_grad_(True)
        loss, stats = intro_loss(leaf, posterior, tokens, mask, n_candidates=n, generator=_gen(7))
        loss.backward()
        return loss.detach(), leaf.grad, stats

    loss, grad, stats = run(policy, posterior, tokens, mask)
    assert torch.all(grad[off] == 0)
    assert torch.all(grad[~off].abs().sum(-1) > 0)

    g = _gen(99)
    policy2 = torch.where(off[..., None], torch.randn(policy.shape, generator=g) * 30, policy)
    posterior2 = torch.where(off[..., None], torch.randn(posterior.shape, generator=g) * 30, posterior)
    tokens2 = torch.where(off, torch.full_like(tokens, -100), tokens)
    loss2, grad2, stats2 = run(policy2, posterior2, tokens2, mask)
    assert torch.equal(loss, loss2)
    assert torch.equal(grad, grad2)
    assert stats == stats2

    # An extra all-padding row is not counted in the mean over sequences.
    pad = lambda x, value: torch.cat([x, torch.full_like(x[:1], value)])  # noqa: E731
    loss3, grad3, _ = run(pad(policy, 5.0), pad(posterior, -5.0), pad(tokens, 0), pad(mask, 0))
    assert torch.equal(loss, loss3)
    assert torch.equal(grad, grad3[:3]) and torch.all(grad3[3] == 0)


def test_all_zero_mask_gives_connected_zero():
    policy, posterior, tokens = _random_case(seed=5, dtype=torch.float32)
    policy.requires_grad_(True)
    loss, stats = intro_loss(policy, posterior, tokens, torch.zeros_like(tokens))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(policy.grad == 0)
    assert set(stats.values()) == {0.0}


# 5. Clipping caps w at C and the loss follows by hand.
def test_clipping_bounds_weights():
    C = 2.0
    policy = torch.zeros(1, 2, 3)  # p = 1/3 everywhere
    posterior = torch.tensor([0.9, 0.05, 0.05]).log().expand(1, 2, 3)  # q(0)/p(0) = 2.7 > C
    tokens = torch.zeros(1, 2, dtype=torch.long)
    mask = torch.ones(1, 2)
    ln3 = math.log(3)

    loss, stats = intro_loss(policy, posterior, tokens, mask, n_candidates=1, clip_max=C)
    assert loss.item() == pytest.approx(C * ln3, rel=1e-6)  # -(1/2)·2·(C·log(1/3))
    assert stats["w_own_mean"] == pytest.approx(C) and stats["w_mean"] == pytest.approx(C)
    assert stats["w_clipped_frac"] == 1.0 and stats["w_gt1_frac"] == 1.0

    # Sampled: a token-0 candidate has w = C exactly, tokens 1, 2 have w = 0.15, so
    # w_mean = C·f + 0.15·(1 − f) with f the clipped fraction; every log p is −ln 3.
    loss, stats = intro_loss(policy, posterior, tokens, mask, n_candidates=200, clip_max=C, generator=_gen(0))
    f = stats["w_clipped_frac"]
    assert 0.2 < f < 0.5
    assert stats["w_mean"] == pytest.approx(C * f + 0.15 * (1 - f), rel=1e-5)
    assert loss.item() == pytest.approx(ln3 * stats["w_mean"], rel=1e-5)

    # "all": Σ_v min(q, C·p)·log p = −(2/3 + 0.05 + 0.05)·ln 3 per position.
    loss, stats = intro_loss(policy, posterior, tokens, mask, n_candidates="all", clip_max=C)
    assert loss.item() == pytest.approx((2 / 3 + 0.1) * ln3, rel=1e-6)
    assert stats["w_mean"] == pytest.approx(2 / 3 + 0.1, rel=1e-6)
    assert stats["w_clipped_frac"] == pytest.approx(1 / 3, rel=1e-6)


def test_huge_ratio_is_clipped_without_overflow():
    C = 200.0
    policy = torch.tensor([[[-100.0, 0.0, 0.0]]])  # p(0) ≈ e^-100: q/p overflows float32
    posterior = torch.tensor([[[0.0, -100.0, -100.0]]])
    tokens = torch.zeros(1, 1, dtype=torch.long)
    for n in (1, 4, "all"):
        loss, stats = intro_loss(
            policy, posterior, tokens, torch.ones(1, 1), n_candidates=n, clip_max=C, generator=_gen(0)
        )
        assert math.isfinite(loss.item())
        assert stats["w_own_mean"] == pytest.approx(C)
    loss, _ = intro_loss(policy, posterior, tokens, torch.ones(1, 1), n_candidates=1, clip_max=C)
    assert loss.item() == pytest.approx(C * (100 + math.log(2 + math.exp(-100))), rel=1e-6)


# 6. B=1, T=2, V=3, n=1 by hand.
def test_hand_computed_own_token_only():
    policy = torch.tensor([[[0.0, math.log(2), 0.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    posterior = torch.tensor([[[math.log(3), 0.0, 0.0], [math.log(2), 0.0, 0.0]]])
    tokens = torch.tensor([[0, 1]])
    # p1 = (1/4, 1/2, 1/4), q1 = (3/5, 1/5, 1/5); p2 = (1/3, 1/3, 1/3), q2 = (1/2, 1/4, 1/4)
    w1, w2 = (3 / 5) / (1 / 4), (1 / 4) / (1 / 3)  # 2.4, 0.75
    expected = -(w1 * math.log(1 / 4) + w2 * math.log(1 / 3)) / 2

    loss, stats = intro_loss(policy, posterior, tokens, torch.ones(1, 2), n_candidates=1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d loss / d logits_t = −(1/2)·w_t·(e_{z_t} − p_t)
    expected_grad = torch.tensor(
        [
            [-0.5 * w1 * (1 - 1 / 4), 0.5 * w1 / 2, 0.5 * w1 / 4],
            [0.5 * w2 / 3, -0.5 * w2 * (2 / 3), 0.5 * w2 / 3],
        ]
    )
    torch.testing.assert_close(policy.grad[0], expected_grad)
    assert stats["w_own_mean"] == pytest.approx((w1 + w2) / 2, rel=1e-6)
    assert stats["w_mean"] == pytest.approx((w1 + w2) / 2, rel=1e-6)
    assert stats["w_gt1_frac"] == 0.5 and stats["w_clipped_frac"] == 0.0
    assert stats["entropy"] == pytest.approx((1.5 * math.log(2) + math.log(3)) / 2, rel=1e-6)
    assert stats["n_tokens"] == 2.0


# 7. Prop. 2.1 on an enumerable toy: z = (z1, z2) ∈ {0,1,2}², y = f(z) = (z1 + z2) mod 3.
def _toy_policy(seed=0):
    g = _gen(seed)
    theta1 = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    theta2 = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    return theta1, theta2


def _log_pi(theta1, theta2, z1, z2):
    return theta1.log_softmax(-1)[z1] + theta2[z1].log_softmax(-1)[z2]


ALL_Z = list(itertools.product(range(3), repeat=2))


@pytest.mark.parametrize("y", [0, 1, 2])
def test_prop_2_1_marginal_gradient_is_posterior_expectation(y):
    theta1, theta2 = _toy_policy(seed=y)
    kept = [z for z in ALL_Z if sum(z) % 3 == y]

    log_marginal = torch.logsumexp(torch.stack([_log_pi(theta1, theta2, *z) for z in kept]), 0)
    lhs = torch.autograd.grad(log_marginal, (theta1, theta2))

    with torch.no_grad():
        post = torch.stack([_log_pi(theta1, theta2, *z) for z in kept]).softmax(0)  # π(z|y)
    rhs = [torch.zeros_like(theta1), torch.zeros_like(theta2)]
    for weight, z in zip(post, kept):
        grads = torch.autograd.grad(_log_pi(theta1, theta2, *z), (theta1, theta2))
        rhs = [acc + weight * g for acc, g in zip(rhs, grads)]

    for a, b in zip(lhs, rhs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert lhs[0].abs().max() > 1e-3  # not a 0 == 0 comparison


@pytest.mark.parametrize("y", [0, 1, 2])
def test_all_with_true_token_posterior_recovers_marginal_gradient(y):
    """With q the exact token posterior π(z_t | z<t, y) and no clip, E_{z∼π(z|y)} of the
    "all" per-token sum Σ_t Σ_v q(v)·∇log p(v) is ∇ log π(y): the loss implements Prop. 2.1."""
    theta1, theta2 = _toy_policy(seed=10 + y)
    kept = [z for z in ALL_Z if sum(z) % 3 == y]
    log_marginal = torch.logsumexp(torch.stack([_log_pi(theta1, theta2, *z) for z in kept]), 0)
    target = torch.autograd.grad(log_marginal, (theta1, theta2))

    with torch.no_grad():
        log_joint = torch.stack([_log_pi(theta1, theta2, *z) for z in kept])
        post = log_joint.softmax(0)  # π(z|y); kept z are indexed by z1 alone
        q1 = torch.zeros(3, dtype=torch.float64)
        for weight, (z1, _) in zip(post, kept):
            q1[z1] = weight
    surrogate = 0.0
    for weight, (z1, z2) in zip(post, kept):
        q2 = torch.full((3,), -math.inf, dtype=torch.float64)
        q2[z2] = 0.0  # z2 is determined by z1 and y
        policy_logits = torch.stack([theta1, theta2[z1]]).unsqueeze(0)
        posterior_logits = torch.stack([q1.log(), q2]).unsqueeze(0)
        loss, _ = intro_loss(
            policy_logits, posterior_logits, torch.tensor([[z1, z2]]), torch.ones(1, 2),
            n_candidates="all", clip_max=math.inf,
        )
        surrogate = surrogate + weight * (-loss * 2)  # undo the 1/|z| token mean
    got = torch.autograd.grad(surrogate, (theta1, theta2))
    for a, b in zip(got, target):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


# 8. Registry.
def test_registry():
    objective = get_objective("intro")
    assert objective.name == "intro" and "intro" in available()
    assert objective.needs == Needs(posterior=True, reference=False, kept_only=True)
    with pytest.raises(ValueError, match="unknown objective 'nope'; known: .*intro"):
        get_objective("nope")


def test_objective_compute_trains_only_rewarded_rows():
    policy, posterior, tokens = _random_case(B=3, T=4, V=5, seed=6, dtype=torch.float32)
    mask = torch.ones_like(tokens)
    rewards = torch.tensor([1.0, 0.0, 1.0])
    objective = get_objective("intro")
    loss, stats = objective.compute(
        ObjectiveInputs(tokens, mask, policy, posterior, rewards=rewards),
        IntroConfig(n_candidates="all", clip_max=50.0),
    )
    keep = rewards > 0
    ref_loss, ref_stats = intro_loss(
        policy[keep], posterior[keep], tokens[keep], mask[keep], n_candidates="all", clip_max=50.0
    )
    torch.testing.assert_close(loss, ref_loss)
    assert stats == ref_stats
    with pytest.raises(ValueError, match="posterior_logits"):
        objective.compute(ObjectiveInputs(tokens, mask, policy), None)
