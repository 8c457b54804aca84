"""RolloutEngine(lora_mode="merge"): the adapter merged into vLLM's weights serves the same model as
vLLM's LoRA path and as peft, CPU only. Helpers come from tests/test_engine.py."""

from __future__ import annotations

import copy
import time

import pytest

from intro_lite.rollout.engine import RolloutEngine

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")
pytest.importorskip("peft")

from test_engine import ATOL, PROMPTS, _build_tiny_qwen2, _make_peft, _max_err, _perturb_lora  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _build_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2_merge"))


@pytest.fixture(scope="module")
def merged(tiny_model):
    eng = RolloutEngine(str(tiny_model), max_lora_rank=16, max_model_len=256, seed=0, lora_mode="merge")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_base(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()


def _check(engine, good, bad, seed):
    out = engine.generate(PROMPTS, n=2, temperature=1.0, max_new_tokens=20, seed=seed)
    return _max_err(good, PROMPTS, out), [_max_err(m, PROMPTS, out) for m in bad]


def test_merge_hot_swap_matches_peft(merged, hf_base, tiny_model, tmp_path):
    assert merged.lora_mode == "merge" and merged.lora_request is None
    ok, _ = _check(merged, hf_base, [], seed=20)
    assert ok < ATOL
    pm = _make_peft(tiny_model, r=8, seed=0)
    pm.save_pretrained(str(tmp_path / "a"))
    t0 = time.perf_counter()
    merged.set_adapter(tmp_path / "a")
    print(f"\n[merge] set_adapter {time.perf_counter() - t0:.3f}s")
    v1 = copy.deepcopy(pm).eval()
    ok, (bad,) = _check(merged, v1, [hf_base], seed=21)
    assert ok < ATOL and bad > 50 * ATOL

    # Same directory, new weights: re-read, and no stale prefix-cache KV for the same prompts.
    _perturb_lora(pm, seed=1)
    pm.save_pretrained(str(tmp_path / "a"))
    merged.set_adapter(tmp_path / "a")
    v2 = copy.deepcopy(pm).eval()
    ok, (bad_v1, bad_base) = _check(merged, v2, [v1, hf_base], seed=22)
    assert ok < ATOL and bad_v1 > 50 * ATOL and bad_base > 50 * ATOL
    assert merged.adapter_dir == (tmp_path / "a").resolve()

    merged.set_adapter(None)  # back to the checkpoint's weights exactly
    ok, (bad_v2,) = _check(merged, hf_base, [v2], seed=23)
    assert ok < ATOL and bad_v2 > 50 * ATOL


def test_merge_rslora_subset_then_other_modules(merged, hf_base, tiny_model, tmp_path):
    """A subset adapter, then one on other modules: layers the new adapter does not touch go back to base."""
    sub = _make_peft(tiny_model, r=4, seed=5, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True)
    sub.save_pretrained(str(tmp_path / "sub"))
    other = _make_peft(tiny_model, r=4, seed=6, target_modules=["k_proj", "gate_proj"])
    other.save_pretrained(str(tmp_path / "other"))
    try:
        merged.set_adapter(tmp_path / "sub")
        assert _check(merged, sub, [], seed=5)[0] < ATOL
        merged.set_adapter(tmp_path / "other")
        ok, (bad,) = _check(merged, other, [sub], seed=6)
        assert ok < ATOL and bad > 50 * ATOL
    finally:
        merged.set_adapter(None)


def test_merge_bad_adapter_keeps_previous(merged, tiny_model, tmp_path):
    pm = _make_peft(tiny_model, r=8, seed=9)
    pm.save_pretrained(str(tmp_path / "good"))
    _make_peft(tiny_model, r=8, seed=9, use_dora=True).save_pretrained(str(tmp_path / "dora"))
    merged.set_adapter(tmp_path / "good")
    try:
        with pytest.raises(ValueError, match="DoRA"):
            merged.set_adapter(tmp_path / "dora")
        with pytest.raises(FileNotFoundError):
            merged.set_adapter(tmp_path / "missing")
        assert merged.adapter_dir == (tmp_path / "good").resolve()
        out = merged.generate(PROMPTS[:1], n=1, temperature=1.0, max_new_tokens=8, seed=1)
        assert _max_err(pm, PROMPTS[:1], out) < ATOL
    finally:
        merged.set_adapter(None)


def test_merge_samples_equal_lora_mode_samples(merged, tiny_model, tmp_path):
    """Same seed, same adapter: the merged engine draws the LoRA engine's tokens (logprobs to fp32 noise)."""
    pm = _make_peft(tiny_model, r=8, seed=3)
    pm.save_pretrained(str(tmp_path / "ad"))
    lora = RolloutEngine(str(tiny_model), max_lora_rank=16, max_model_len=256, seed=0, lora_mode="lora")
    try:
        lora.set_adapter(tmp_path / "ad")
        merged.set_adapter(tmp_path / "ad")
        kw = dict(n=4, temperature=1.0, max_new_tokens=24, seed=7, ignore_eos=True)
        a, b = merged.generate(PROMPTS, **kw), lora.generate(PROMPTS, **kw)
        assert [[s.token_ids for s in p] for p in a] == [[s.token_ids for s in p] for p in b]
        diff = max(abs(x - y) for p, q in zip(a, b) for s, t in zip(p, q) for x, y in zip(s.logprobs, t.logprobs))
        assert diff < 1e-4
    finally:
        lora.close()
        merged.set_adapter(None)


def test_lora_mode_choice(tiny_model):
    with pytest.raises(ValueError, match="lora_mode"):
        RolloutEngine(str(tiny_model), max_lora_rank=8, max_model_len=128, lora_mode="fused")
    with pytest.raises(ValueError, match="float32"):
        RolloutEngine(str(tiny_model), max_lora_rank=8, max_model_len=128, dtype="bfloat16", lora_mode="merge")


def test_generate_without_logprobs_draws_the_same_tokens(merged):
    # After test_merge_samples_equal_lora_mode_samples: this engine keeps working once another is closed.
    kw = dict(n=3, temperature=1.0, max_new_tokens=16, seed=11, ignore_eos=True)
    a = merged.generate(PROMPTS, **kw)
    b = merged.generate(PROMPTS, logprobs=False, **kw)
    assert [[s.token_ids for s in p] for p in a] == [[s.token_ids for s in p] for p in b]
    assert all(s.logprobs == [] for p in b for s in p) and all(len(s.logprobs) == 16 for p in a for s in p)
    assert [[s.text for s in p] for p in a] == [[s.text for s in p] for p in b]
