"""The logprob gap (train/gap.py): vLLM's logprobs of the rollout tokens against the trainer's, every step."""

import pytest
import torch

from intro_lite.objectives import ObjectiveInputs, Row
from intro_lite.train.gap import GapSums, chunk_gaps, global_gap, served_positions, trainer_logprobs

B, T, H, V = 3, 7, 16, 50


def hidden_and_logits(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, V, (B, T), generator=g)
    return hidden, weight, tokens, hidden @ weight.t()


def rows_served(lengths, tokens):
    """Rows whose suffix is the whole of `tokens[b]` and that have `lengths[b]` served logprobs (None for 0)."""
    return [Row(0, b, [1], [1], tokens[b].tolist(), T, 1.0, [-1.0] * n or None) for b, n in enumerate(lengths)]


def test_the_hidden_state_path_gives_the_logits_paths_logprobs_in_float64():
    hidden, weight, tokens, logits = hidden_and_logits()
    where = served_positions(rows_served([7, 0, 4], tokens), T, "cpu")[1]
    assert where.sum() == 11 and where[1].sum() == 0 and where[2].tolist() == [True] * 4 + [False] * 3
    by_logits = trainer_logprobs(ObjectiveInputs(tokens=tokens, mask=where.double(), policy_logits=logits), where)
    # chunk_size 3: 11 positions in chunks of 3, 3, 3, 2 (the chunk boundaries cross rows)
    by_hidden = trainer_logprobs(ObjectiveInputs(tokens=tokens, mask=where.double(), policy_logits=None,
                                                 policy_hidden=hidden, lm_head_weight=weight), where, chunk_size=3)
    want = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)[where]
    assert by_logits.dtype == by_hidden.dtype == torch.float64
    # float64 with logits of size ~sqrt(H)·3 ≈ 12: a logit's H-term dot product rounds to within H·2⁻⁵³·Σ|h·w| ≈ 1e-13
    # whichever way the product is blocked, and logsumexp adds a few ulp of its ~15; 1e-11 leaves 100x
    torch.testing.assert_close(by_hidden, want, rtol=0, atol=1e-11)
    torch.testing.assert_close(by_logits, want, rtol=0, atol=1e-11)


def test_float32_hidden_states_are_scored_in_float32_at_least():
    hidden, weight, tokens, _ = hidden_and_logits(1)
    where = torch.ones(B, T, dtype=torch.bool)
    half = ObjectiveInputs(tokens=tokens, mask=where.float(), policy_logits=None, policy_hidden=hidden.bfloat16(),
                           lm_head_weight=weight.bfloat16())
    assert trainer_logprobs(half, where).dtype == torch.float32


def test_the_gap_is_the_served_minus_the_trainers_logprob_at_served_positions_only():
    _, _, tokens, logits = hidden_and_logits(2)
    exact = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    offsets = torch.tensor([[0.5, -0.25, 0.0], [0.1, 0.2, 0.0]], dtype=torch.float64)
    # row 0: 3 served tokens (a LaTRO row: its answer tokens were not sampled); row 1: 2; row 2: none (SFT's gold)
    chunk = [Row(0, b, [1], [1], tokens[b].tolist(), T, 1.0, (exact[b, :n] + offsets[b, :n]).tolist() if n else None)
             for b, n in enumerate([3, 2, 0])]
    gaps = chunk_gaps(ObjectiveInputs(tokens=tokens, mask=torch.ones(B, T), policy_logits=logits), chunk)
    torch.testing.assert_close(gaps, torch.tensor([0.5, 0.25, 0.0, 0.1, 0.2], dtype=torch.float64), rtol=0, atol=1e-12)
    sums = GapSums()
    sums.add(gaps[:2])
    sums.add(gaps[2:])  # two micro-batches add up to one
    mean, top = global_gap(sums)
    assert mean == pytest.approx(1.05 / 5, abs=1e-12) and top == pytest.approx(0.5, abs=1e-12)
    assert global_gap(GapSums()) == (None, None)  # nothing served: null (SFT, or no row trained)
    with pytest.raises(ValueError, match="3 served logprobs for 2 suffix tokens"):
        served_positions([Row(0, 0, [1], [1], [4, 5], 2, 1.0, [-1.0] * 3)], 2, "cpu")
