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


def tiny_test_cfg(tmp_path, *extra):
    from intro_lite.config import load_config

    return load_config("recipes/tiny.toml", ["model.name_or_path=tiny-test", "data.source=tiny-test", 'eval.source=""',
                                             "model.quantization=none", f'output_dir="{tmp_path}"', *extra])


class NoRolloutEngine:
    """An engine for objectives that roll nothing out: generating is an error."""

    def set_adapter(self, path):
        pass

    def generate(self, *args, **kwargs):
        raise AssertionError("this objective needs no rollouts")


def test_sft_rolls_nothing_out(tiny_assets, tmp_path):
    import json

    from intro_lite.train import train

    cfg = tiny_test_cfg(tmp_path, 'objective="sft"', "train.steps=2", "train.prompts_per_step=3",
                        "train.checkpoint_every=0")
    run = train(cfg, progress=False, engine=NoRolloutEngine(), grader=object())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        assert r["rollout_accuracy"] is None and r["mean_length"] is None and r["rollout_tokens_total"] == 0
        assert r["kept_fraction"] == 1.0 and r["n_tokens"] > 0 and r["loss"] == r["nll"] > 0
