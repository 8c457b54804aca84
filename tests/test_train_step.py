"""train_step and the loop's helpers, called directly on the small tiny-test model (no vLLM)."""

import pytest
import torch

from intro_lite.train import rollout_seed


def test_rollout_seeds_never_repeat_across_steps_or_samples():
    # The engine gives sample j of prompt i the seed base + i·G + j (RolloutEngine.generate).
    for seed in (0, 1, 7):
        for P, G in ((16, 4), (1, 1), (3, 8)):
            used = [rollout_seed(seed, step, P * G) + i * G + j for step in range(1, 201) for i in range(P) for j in range(G)]
            assert len(set(used)) == len(used), (seed, P, G)
    assert rollout_seed(3, 1, 64) == 3 * 1_000_003 + 1  # step 1 keeps the seed it always had
