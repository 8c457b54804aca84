"""intro_lite/forward.py: length-bucketed and prefix-shared passes give the same hidden states, logits and gradients as one row at a time."""

import torch

from intro_lite.forward import length_buckets, lm_head_weight, suffix_hidden, suffix_logits


def test_length_buckets_cut_padding():
    lengths = [90] * 4 + [134] * 4 + [98] * 4
    groups = length_buckets(lengths, overhead=64)
    assert sorted(b for g in groups for b in g) == list(range(12))
    assert [sorted(lengths[b] for b in g) for g in groups] == [[90] * 4 + [98] * 4, [134] * 4]
    assert length_buckets(lengths, overhead=10**6) == [sorted(range(12), key=lambda b: lengths[b])]
    assert length_buckets([5]) == [[0]]


def test_bucketed_passes_equal_row_by_row(tiny_assets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_assets.model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    g = torch.Generator().manual_seed(0)
    V = base.config.vocab_size
    prefixes = [torch.randint(1, V, (n,), generator=g).tolist() for n in (3, 40, 5, 41, 4)]
    suffixes = [torch.randint(1, V, (n,), generator=g).tolist() for n in (6, 2, 7, 9, 1)]
    assert len(length_buckets([len(p) + len(s) for p, s in zip(prefixes, suffixes)])) > 1
    with torch.no_grad():
        hidden, tokens, mask = suffix_hidden(model, prefixes, suffixes, pad_id=0)
        logits, tokens2, mask2 = suffix_logits(model, prefixes, suffixes, pad_id=0)
        for b, (p, s) in enumerate(zip(prefixes, suffixes)):
            one, t1, m1 = suffix_hidden(model, [p], [s], pad_id=0)
            torch.testing.assert_close(hidden[b, : len(s)], one[0], rtol=1e-5, atol=1e-5)
            assert tokens[b, : len(s)].tolist() == s and mask[b].sum() == len(s)
        torch.testing.assert_close(logits, (hidden @ lm_head_weight(model).T).float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens, tokens2) and torch.equal(mask, mask2)
    # Gradient reaches every row through the re-ordering.
    h, _, _ = suffix_hidden(model, prefixes, suffixes, pad_id=0)
    (h * mask.unsqueeze(-1)).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(gr is not None and gr.abs().sum() > 0 for gr in grads)


def test_lm_head_weight_is_the_head(tiny_assets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_assets.model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]))
    assert lm_head_weight(model) is base.lm_head.weight


def _two_layer_policy(monkeypatch, gradient_checkpointing=False):
    """A random 2-layer Qwen2 (the KV cache spans layers) with a non-zero LoRA, in float64 throughout, so the
    shared and unshared passes can be held to 1e-9: Qwen2's RMSNorm computes in float32 whatever the model's
    dtype, and its rounding differs with the order the rows' gradients are summed (~1e-7 here), so the test
    swaps in the same norm in float64."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2 import modeling_qwen2

    def rms_norm_float64(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_qwen2.Qwen2RMSNorm, "forward", rms_norm_float64)

    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False)).double()
    model.train()
    return model


def _rows():
    """7 rows over 3 distinct prefixes (lengths 3, 40, 5: the shared pass pads them), suffixes of 1-30 tokens."""
    g = torch.Generator().manual_seed(1)
    xs = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (3, 40, 5)]
    prefixes = [xs[i] for i in (0, 1, 0, 2, 1, 1, 0)]
    suffixes = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (6, 2, 7, 9, 1, 30, 4)]
    return prefixes, suffixes


def _hidden_and_grads(model, fn):
    model.zero_grad()
    hidden, mask = fn()
    (hidden * mask.unsqueeze(-1)).pow(2).sum().backward()
    return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_rows_sharing_a_prefix_run_it_once_with_the_same_states_and_gradients(monkeypatch):
    import intro_lite.forward as forward

    model = _two_layer_policy(monkeypatch)
    prefixes, suffixes = _rows()
    calls = []
    shared_pass = forward._shared_prefix_hidden
    monkeypatch.setattr(forward, "_shared_prefix_hidden", lambda *a: calls.append(a[1]) or shared_pass(*a))
    h_shared, g_shared = _hidden_and_grads(model, lambda: (lambda h, t, m: (h, m))(*suffix_hidden(model, prefixes, suffixes, 0)))
    assert [len(u) for u in calls[0]] == [3, 40, 5]  # three distinct prefixes, each run once
    mask = suffix_hidden(model, prefixes, suffixes, 0)[2]
    h_plain, g_plain = _hidden_and_grads(model, lambda: (forward._bucketed_hidden(model.get_base_model(), prefixes, suffixes, 0), mask))
    torch.testing.assert_close(h_shared * mask.unsqueeze(-1), h_plain * mask.unsqueeze(-1), rtol=1e-10, atol=1e-10)
    assert g_shared.keys() == g_plain.keys() and len(g_shared) == 12  # 3 modules x (A, B) x 2 layers
    for k in g_plain:
        torch.testing.assert_close(g_shared[k], g_plain[k], rtol=1e-9, atol=1e-12)
    # The unshared path itself against one row at a time (no padding anywhere).
    for b, (p, s) in enumerate(zip(prefixes, suffixes)):
        one = forward._bucketed_hidden(model.get_base_model(), [p], [s], 0)[0].detach()
        torch.testing.assert_close(h_shared[b, : len(s)], one, rtol=1e-10, atol=1e-10)


def test_checkpointed_training_pass_does_not_share_but_its_no_grad_passes_do(monkeypatch):
    """transformers drops the KV cache inside checkpointed layers while training: a grad pass must not
    share (it would silently attend to nothing); without grad the checkpointing is lifted for the pass."""
    import intro_lite.forward as forward

    model = _two_layer_policy(monkeypatch, gradient_checkpointing=True)
    prefixes, suffixes = _rows()
    calls = []
    shared_pass = forward._shared_prefix_hidden
    monkeypatch.setattr(forward, "_shared_prefix_hidden", lambda *a: calls.append(1) or shared_pass(*a))
    h_grad, _, mask = suffix_hidden(model, prefixes, suffixes, 0)
    assert calls == [] and h_grad.requires_grad
    with torch.no_grad():
        h_nograd = suffix_hidden(model, prefixes, suffixes, 0)[0]
    assert calls == [1]
    torch.testing.assert_close(h_nograd * mask.unsqueeze(-1), h_grad.detach() * mask.unsqueeze(-1), rtol=1e-10, atol=1e-10)
    layers = [m for m in model.modules() if hasattr(m, "gradient_checkpointing") and m.__class__.__name__.endswith("DecoderLayer")]
    assert layers and all(m.gradient_checkpointing for m in layers)  # restored after the no-grad pass
