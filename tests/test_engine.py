"""Tests for intro_lite.rollout (vLLM rollout engine with hot-swapped LoRA), CPU only.

One engine is shared by the whole module (start-up costs ~10 s on CPU, and
the first generate() call pays a one-off torch.compile of vLLM's logprob
gather of a few seconds).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from intro_lite.rollout.engine import RolloutEngine, Sample  # sets VLLM_ENABLE_V1_MULTIPROCESSING before vllm import
from intro_lite.rollout.lora_rules import SUPPORTED_LORA_RANKS, check_lora_compat, supported_max_lora_rank

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.slow

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB = 512
ATOL = 1e-3


def _build_tiny_qwen2(d: str | Path) -> Path:
    """Random tiny Qwen2 (head_dim 64, tied embeddings) + a BPE tokenizer trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero",
             "plus", "minus", "times", "is", "the", "answer", "question", "=", "+", "-", "*"]
    corpus = [
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + f" {rng.randint(0, 9999)}"
        for _ in range(400)
    ]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>", unk_token="<unk>"
    )
    if len(hf_tok) < VOCAB:  # make every model id decodable
        hf_tok.add_tokens([f"<extra_{i}>" for i in range(VOCAB - len(hf_tok))])
    assert len(hf_tok) == VOCAB
    hf_tok.save_pretrained(d)

    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64 (CPU attention needs >= 32)
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.08,  # peakier than 0.02 so logprobs are not ~uniform
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return _build_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="module")
def engine(tiny_model):
    rng_before = torch.get_rng_state()
    t0 = time.perf_counter()
    eng = RolloutEngine(str(tiny_model), max_lora_rank=16, max_model_len=256, seed=0)
    print(f"\n[engine] vLLM start-up {time.perf_counter() - t0:.1f}s")
    eng._test_global_state = dict(
        rng_kept=torch.equal(torch.get_rng_state(), rng_before),
        set_num_threads_kept=torch.set_num_threads is torch._C.set_num_threads,
    )
    t0 = time.perf_counter()
    eng.generate([[5, 6, 7]], n=2, temperature=1.0, max_new_tokens=4, seed=0)  # compile warm-up
    print(f"[engine] first generate (warm-up) {time.perf_counter() - t0:.1f}s")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_base(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()


def _hf_logprobs(model, seqs: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    """log p(token) under ``model`` for each (prompt, tokens); one right-padded forward.

    Right padding needs no attention mask: with causal attention the padding
    after a sequence cannot change the logits of its own positions.
    """
    full = [p + t for p, t in seqs]
    width = max(map(len, full))
    ids = torch.tensor([f + [0] * (width - len(f)) for f in full])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
    res = []
    for row, (p, t) in enumerate(seqs):
        pos = torch.arange(len(p) - 1, len(p) + len(t) - 1)
        res.append(logp[row, pos, torch.tensor(t)])
    return res


def _max_err(model, prompts: list[list[int]], out: list[list[Sample]]) -> float:
    """max |vLLM logprob - HF logprob| over all samples of all prompts."""
    assert len(prompts) == len(out)
    seqs = [(p, s.token_ids) for p, ss in zip(prompts, out) for s in ss]
    refs = _hf_logprobs(model, seqs)
    vllm = [torch.tensor(s.logprobs) for ss in out for s in ss]
    return max((r - v).abs().max().item() for r, v in zip(refs, vllm))


def _make_peft(tiny_model, r: int = 8, seed: int = 0, **kw):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(
        r=r, lora_alpha=kw.pop("lora_alpha", 2 * r), target_modules=kw.pop("target_modules", ALL_LINEAR),
        init_lora_weights=False, lora_dropout=0.0, **kw,
    )
    return peft.get_peft_model(base, cfg).eval()


def _perturb_lora(pm, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


PROMPTS = [[5, 6, 7, 8, 9], [42, 17], [100, 200, 300, 11, 12, 13, 14]]


# --------------------------------------------------------------------------- 1
def test_startup_leaves_global_state(engine):
    """vLLM's CPU worker reseeds the global RNG and no-ops torch.set_num_threads; undone."""
    assert engine._test_global_state == dict(rng_kept=True, set_num_threads_kept=True)
    n = torch.get_num_threads()
    engine.generate([[1, 2, 3]], n=1, temperature=1.0, max_new_tokens=2, seed=0)
    assert torch.get_num_threads() == n


def test_no_rendezvous_file_outlives_start_up(engine):
    """vLLM's one-process rendezvous file (a torch FileStore in $TMPDIR) is gone once the engine is up, with
    the private directory it was made in: a killed run leaves nothing in /tmp (issue 24 §3)."""
    from torch.distributed import FileStore
    from torch.distributed.distributed_c10d import _get_default_store

    store = _get_default_store()
    store = getattr(store, "underlying_store", store)
    assert isinstance(store, FileStore)
    path = Path(store.path)
    assert path.name.startswith("vllm_dist_") and path.parent.name.startswith("intro-lite-vllm-")
    assert not path.exists() and not path.parent.exists()
    engine.generate([[1, 2, 3]], n=1, temperature=1.0, max_new_tokens=2, seed=0)  # and the engine still works


def test_generate_shapes(engine):
    engine.set_adapter(None)
    t0 = time.perf_counter()
    out = engine.generate(PROMPTS, n=3, temperature=1.0, top_p=0.95, max_new_tokens=16, seed=1)
    print(f"\n[engine] generate 3 prompts x n=3 x 16 tokens: {time.perf_counter() - t0:.2f}s")
    assert len(out) == len(PROMPTS)
    for samples in out:
        assert len(samples) == 3
        for s in samples:
            assert isinstance(s, Sample)
            assert 1 <= len(s.token_ids) <= 16
            assert len(s.logprobs) == len(s.token_ids)
            assert all(isinstance(t, int) and 0 <= t < VOCAB for t in s.token_ids)
            assert all(lp <= 0.0 for lp in s.logprobs)
            assert s.finish_reason in ("stop", "length")
            assert isinstance(s.text, str)
            if s.finish_reason == "length":
                assert len(s.token_ids) == 16


def test_ignore_eos_and_stop(engine, tiny_model):
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(str(tiny_model)).eos_token_id
    engine.set_adapter(None)
    # ignore_eos: every sample runs to max_new_tokens.
    out = engine.generate(PROMPTS, n=4, temperature=1.5, max_new_tokens=24, seed=7, ignore_eos=True)
    assert all(len(s.token_ids) == 24 and s.finish_reason == "length" for p in out for s in p)
    # Without ignore_eos, a sample that stops ends with (and includes) EOS.
    out = engine.generate([[eos], [eos, 5]] * 4, n=8, temperature=2.0, max_new_tokens=64, seed=3)
    stopped = [s for p in out for s in p if s.finish_reason == "stop"]
    print(f"\n[engine] {len(stopped)} of 64 samples stopped on EOS")
    assert stopped  # EOS has p~1/512 per token: ~8 expected in 64x64 tokens
    for s in stopped:
        assert s.token_ids[-1] == eos and eos not in s.token_ids[:-1]
        assert len(s.logprobs) == len(s.token_ids)


def test_base_logprob_parity(engine, hf_base):
    engine.set_adapter(None)
    out = engine.generate(PROMPTS, n=2, temperature=1.0, max_new_tokens=20, seed=11)
    err = _max_err(hf_base, PROMPTS, out)
    print(f"\n[engine] base parity max|dlogprob| = {err:.2e}")
    assert err < ATOL


# --------------------------------------------------------------------------- 2
def test_hot_swap_lora(engine, hf_base, tiny_model, tmp_path):
    dir_a, dir_b = tmp_path / "adapter_a", tmp_path / "adapter_b"
    pm = _make_peft(tiny_model, r=8, seed=0)
    pm.save_pretrained(str(dir_a))
    assert (dir_a / "adapter_model.safetensors").is_file()

    def check(model_ok, models_bad, seed):
        out = engine.generate(PROMPTS, n=2, temperature=1.0, max_new_tokens=20, seed=seed)
        return _max_err(model_ok, PROMPTS, out), [_max_err(m, PROMPTS, out) for m in models_bad]

    def frozen_copy(m):
        import copy

        return copy.deepcopy(m).eval()

    t0 = time.perf_counter()
    engine.set_adapter(dir_a)
    print(f"\n[engine] set_adapter {time.perf_counter() - t0:.3f}s")
    v1 = frozen_copy(pm)
    ok, (bad_base,) = check(v1, [hf_base], seed=21)
    print(f"[engine] adapter v1 parity {ok:.2e} (vs base {bad_base:.2f})")
    assert ok < ATOL and bad_base > 50 * ATOL

    # Modified weights saved into the SAME directory -> must be re-read.
    _perturb_lora(pm, seed=1)
    pm.save_pretrained(str(dir_a))
    engine.set_adapter(dir_a)
    v2 = frozen_copy(pm)
    ok, (bad_v1, bad_base) = check(v2, [v1, hf_base], seed=22)
    print(f"[engine] adapter v2 (same dir) parity {ok:.2e} (vs v1 {bad_v1:.2f})")
    assert ok < ATOL and bad_v1 > 50 * ATOL and bad_base > 50 * ATOL

    # Modified again, saved to a NEW directory.
    _perturb_lora(pm, seed=2)
    pm.save_pretrained(str(dir_b))
    engine.set_adapter(dir_b)
    v3 = frozen_copy(pm)
    ok, (bad_v2, bad_v1) = check(v3, [v2, v1], seed=23)
    print(f"[engine] adapter v3 (new dir) parity {ok:.2e} (vs v2 {bad_v2:.2f})")
    assert ok < ATOL and bad_v2 > 50 * ATOL and bad_v1 > 50 * ATOL

    # Only one adapter is registered in vLLM at a time.
    assert engine.llm.llm_engine.list_loras() == {engine.lora_request.lora_int_id}

    # None -> base model again.
    engine.set_adapter(None)
    ok, (bad_v3,) = check(hf_base, [v3], seed=24)
    assert ok < ATOL and bad_v3 > 50 * ATOL
    assert engine.lora_request is None and engine.llm.llm_engine.list_loras() == set()


def test_lora_rank_padding_and_subset(engine, tiny_model, tmp_path):
    """Rank-4 rsLoRA on a subset of modules loads into the max_lora_rank=16 engine."""
    pm = _make_peft(tiny_model, r=4, seed=5, target_modules=["q_proj", "v_proj", "down_proj"],
                    use_rslora=True)
    pm.save_pretrained(str(tmp_path / "r4"))
    engine.set_adapter(tmp_path / "r4")
    try:
        out = engine.generate(PROMPTS[:2], n=2, temperature=1.0, max_new_tokens=12, seed=5)
        assert _max_err(pm, PROMPTS[:2], out) < ATOL
    finally:
        engine.set_adapter(None)


def test_bad_adapter_keeps_previous(engine, tiny_model, tmp_path):
    pm = _make_peft(tiny_model, r=8, seed=9)
    pm.save_pretrained(str(tmp_path / "good"))
    dora = _make_peft(tiny_model, r=8, seed=9, use_dora=True)
    dora.save_pretrained(str(tmp_path / "dora"))
    engine.set_adapter(tmp_path / "good")
    try:
        with pytest.raises(ValueError, match="DoRA"):
            engine.set_adapter(tmp_path / "dora")
        assert engine.adapter_dir == (tmp_path / "good").resolve()
        out = engine.generate(PROMPTS[:1], n=1, temperature=1.0, max_new_tokens=8, seed=1)
        assert _max_err(pm, PROMPTS[:1], out) < ATOL
        with pytest.raises(FileNotFoundError):
            engine.set_adapter(tmp_path / "missing")
    finally:
        engine.set_adapter(None)


# --------------------------------------------------------------------------- 3
def test_same_seed_same_samples(engine, tiny_model, tmp_path):
    kw = dict(n=4, temperature=1.0, top_p=0.9, max_new_tokens=16)
    a = engine.generate(PROMPTS, seed=123, **kw)
    b = engine.generate(PROMPTS, seed=123, **kw)
    c = engine.generate(PROMPTS, seed=124, **kw)
    assert [[s.token_ids for s in p] for p in a] == [[s.token_ids for s in p] for p in b]
    assert [[s.logprobs for s in p] for p in a] == [[s.logprobs for s in p] for p in b]
    assert [[s.token_ids for s in p] for p in a] != [[s.token_ids for s in p] for p in c]
    # the n samples of one prompt are not copies of each other
    assert len({tuple(s.token_ids) for s in a[0]}) > 1
    # same prompt twice in one batch gets different (but reproducible) samples
    d = engine.generate([PROMPTS[0], PROMPTS[0]], seed=5, **kw)
    assert [s.token_ids for s in d[0]] != [s.token_ids for s in d[1]]
    # batch composition does not change a prompt's samples
    e = engine.generate([PROMPTS[0]], seed=123, **kw)
    assert [s.token_ids for s in e[0]] == [s.token_ids for s in a[0]]
    # also with an adapter
    pm = _make_peft(tiny_model, r=8, seed=3)
    pm.save_pretrained(str(tmp_path / "ad"))
    engine.set_adapter(tmp_path / "ad")
    try:
        a = engine.generate(PROMPTS, seed=7, **kw)
        b = engine.generate(PROMPTS, seed=7, **kw)
        assert [[s.token_ids for s in p] for p in a] == [[s.token_ids for s in p] for p in b]
    finally:
        engine.set_adapter(None)


# --------------------------------------------------------------------------- 4
def test_check_lora_compat():
    import typing

    from vllm.config.lora import MaxLoRARanks

    assert SUPPORTED_LORA_RANKS == tuple(sorted(typing.get_args(MaxLoRARanks)))
    check_lora_compat(16, ALL_LINEAR)
    check_lora_compat(4, ["q_proj", "v_proj"])
    check_lora_compat(8, "all-linear")
    check_lora_compat(8, ["model.layers.0.self_attn.q_proj"])
    assert supported_max_lora_rank(4) == 8 and supported_max_lora_rank(16) == 16
    assert supported_max_lora_rank(300) == 320
    cases = [
        (dict(rank=1024, target_modules=ALL_LINEAR), "rank"),
        (dict(rank=0, target_modules=ALL_LINEAR), "rank"),
        (dict(rank=8, target_modules=["q_proj", "lm_head"]), "lm_head"),
        (dict(rank=8, target_modules=["embed_tokens"]), "embed_tokens"),
        (dict(rank=8, target_modules=ALL_LINEAR, use_dora=True), "DoRA"),
        (dict(rank=8, target_modules=ALL_LINEAR, bias="all"), "bias"),
        (dict(rank=8, target_modules=ALL_LINEAR, modules_to_save=["lm_head"]), "modules_to_save"),
        (dict(rank=8, target_modules=ALL_LINEAR, init_lora_weights="pissa"), "pissa"),
        (dict(rank=8, target_modules=[]), "empty"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(ValueError, match=needle) as ei:
            check_lora_compat(**kwargs)
        msg = str(ei.value)
        assert "\n" not in msg and msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check")
def test_bitsandbytes_rejected_on_cpu(tiny_model):
    with pytest.raises(ValueError, match="bitsandbytes"):
        RolloutEngine(str(tiny_model), max_lora_rank=8, max_model_len=128, quantization="bitsandbytes")


def test_seeded_batch_larger_than_one_scheduler_step(engine):
    # More prompt tokens than vLLM schedules in one step (4096): with chunked prefill the CPU
    # backend crashed rewinding a seeded generator ("CPU Generator does not use offset").
    prompts = [[(7 * i + j) % 300 + 1 for j in range(30)] for i in range(200)]
    a = engine.generate(prompts, n=1, temperature=0.6, top_p=0.95, max_new_tokens=4, seed=3)
    b = engine.generate(prompts, n=1, temperature=0.6, top_p=0.95, max_new_tokens=4, seed=3)
    assert len(a) == 200 and [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
