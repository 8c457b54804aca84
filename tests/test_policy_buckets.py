"""Length-bucketed policy passes: the same hidden states and logits as one row at a time."""

import torch

from intro_lite.policy import length_buckets, lm_head_weight, suffix_hidden, suffix_logits


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
