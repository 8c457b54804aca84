"""The policy's passes over suffixes: hidden states and logits at the positions that predict each
suffix token (a rationale, a gold solution, an answer) given its prefix (x, or x ⊕ y), in length
buckets, with a prompt's rows sharing one pass over their common prefix."""

from __future__ import annotations

import contextlib
import math

import torch


def right_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids `[B, L]` and their attention mask."""
    ids = torch.full((len(seqs), max(len(q) for q in seqs)), pad_id, dtype=torch.long)
    attn = torch.zeros(ids.shape, dtype=torch.long)
    for b, q in enumerate(seqs):
        ids[b, : len(q)] = torch.tensor(q, dtype=torch.long)
        attn[b, : len(q)] = 1
    return ids.to(device), attn.to(device)


def pad_concat(prefixes: list[list[int]], suffixes: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prefix ⊕ suffix ids, attention mask, and for each suffix token the index of the
    position whose logits predict it (prefix_len - 1 + t), plus the suffix mask."""
    ids, attn = right_pad([p + s for p, s in zip(prefixes, suffixes)], pad_id, device)
    B, T = len(prefixes), max(len(s) for s in suffixes)
    pred_pos = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    for b, (p, s) in enumerate(zip(prefixes, suffixes)):
        pred_pos[b, : len(s)] = torch.arange(len(p) - 1, len(p) - 1 + len(s))
        mask[b, : len(s)] = 1.0
    return ids, attn, pred_pos.to(device), mask.to(device)


# A forward pass costs about this many padded tokens of fixed overhead (module calls, small kernels):
# splitting a batch into length buckets pays only when it saves more padding than that.
BUCKET_OVERHEAD_TOKENS = 64


def length_buckets(lengths: list[int], overhead: int | None = None) -> list[list[int]]:
    """Row indices grouped so that padding each group to its own longest row costs the fewest tokens,
    counting ``overhead`` (default BUCKET_OVERHEAD_TOKENS) tokens per group: rows sorted by length,
    cut by dynamic programming."""
    overhead = BUCKET_OVERHEAD_TOKENS if overhead is None else overhead
    order = sorted(range(len(lengths)), key=lambda b: lengths[b])
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[order[j - 1]] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def suffix_hidden(model, prefixes: list[list[int]], suffixes: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Last hidden states `[B, T, H]` at the positions that predict each suffix token (given
    prefix ⊕ suffix<t), the suffix ids `[B, T]` and mask `[B, T]`: `suffix_logits` before the LM
    head (`lm_head_weight`), for losses that make the logits themselves, chunk by chunk. Grad mode
    is the caller's. Rows run in length buckets (`length_buckets`), each padded only to its own
    longest prefix ⊕ suffix; hidden states at padded suffix positions (mask 0) are meaningless.
    Rows with the same prefix (a prompt's G rollouts) share one pass over it (`_shared_prefix_hidden`)
    where the model allows; the result is the same up to float rounding."""
    base = model.get_base_model()  # LoRA layers are injected in place, so the adapter stays active
    uniq: dict[tuple[int, ...], int] = {}
    owner = [uniq.setdefault(tuple(p), len(uniq)) for p in prefixes]
    if len(uniq) < len(prefixes) and _can_share_prefixes(base):
        with _no_checkpointing_without_grad(base):
            picked = _shared_prefix_hidden(base, [list(u) for u in uniq], owner, suffixes, pad_id)
    else:
        picked = _bucketed_hidden(base, prefixes, suffixes, pad_id)
    T = picked.shape[1]
    tokens = torch.zeros((len(suffixes), T), dtype=torch.long)
    mask = torch.zeros((len(suffixes), T), dtype=torch.float32)
    for b, s in enumerate(suffixes):
        tokens[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1.0
    return picked, tokens.to(picked.device), mask.to(picked.device)


def _bucketed_hidden(base, prefixes: list[list[int]], suffixes: list[list[int]], pad_id: int) -> torch.Tensor:
    """`suffix_hidden`'s states, one forward of prefix ⊕ suffix per length bucket."""
    device = next(p for p in base.parameters()).device
    T = max(len(s) for s in suffixes)
    groups = length_buckets([len(p) + len(s) for p, s in zip(prefixes, suffixes)])
    pieces = []
    for rows in groups:
        ids, attn, pred_pos, _ = pad_concat([prefixes[b] for b in rows], [suffixes[b] for b in rows], pad_id, device)
        hidden = base.model(input_ids=ids, attention_mask=attn).last_hidden_state  # [b, L, H]
        picked = torch.gather(hidden, 1, pred_pos.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
        pieces.append(torch.nn.functional.pad(picked, (0, 0, 0, T - picked.shape[1])))
    return _in_row_order(pieces, groups, len(prefixes))


def _in_row_order(pieces: list[torch.Tensor], groups: list[list[int]], n: int) -> torch.Tensor:
    """Concatenate per-bucket results and put their rows back in the callers' order."""
    picked = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    if len(groups) > 1 or groups[0] != list(range(n)):
        where = torch.empty(n, dtype=torch.long)
        where[[b for rows in groups for b in rows]] = torch.arange(n)
        picked = picked.index_select(0, where.to(picked.device))
    return picked


def _can_share_prefixes(base) -> bool:
    """A shared prefix needs a KV cache the suffix pass can attend to: plain full-attention layers (no
    sliding window or recurrent state), and no gradient checkpointing where it would drop the cache
    (transformers sets past_key_values=None in checkpointed layers in training mode; without grad
    `_no_checkpointing_without_grad` lifts the checkpointing for the pass instead)."""
    types = getattr(base.config, "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in types) or getattr(base.config, "use_sliding_window", False):
        return False
    return not (torch.is_grad_enabled() and base.training and getattr(base, "is_gradient_checkpointing", False))


@contextlib.contextmanager
def _no_checkpointing_without_grad(base):
    """Without grad, checkpointing saves nothing, but it would still drop the KV cache: lift it for the pass."""
    layers = [m for m in base.modules() if getattr(m, "gradient_checkpointing", False)] if not torch.is_grad_enabled() else []
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in layers:
            m.gradient_checkpointing = True


def _shared_prefix_hidden(base, uniq: list[list[int]], owner: list[int], suffixes: list[list[int]], pad_id: int) -> torch.Tensor:
    """`suffix_hidden`'s states with each distinct prefix run once: one pass over the (right-padded)
    distinct prefixes keeps their KV cache, then each length bucket of suffixes runs on top of its
    rows' prefix caches (gathered by `owner`, row -> prefix), with the prefix padding masked out and
    positions continuing from each row's own prefix length. Gradients reach the shared prefix pass
    through the gathered caches (index_select sums the rows' contributions)."""
    from transformers import DynamicCache

    device = next(p for p in base.parameters()).device
    ids, attn = right_pad(uniq, pad_id, device)
    Lp = ids.shape[1]
    out = base.model(input_ids=ids, attention_mask=attn, use_cache=True)
    prefix_hidden, cache = out.last_hidden_state, out.past_key_values
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    last = torch.tensor([len(u) - 1 for u in uniq], device=device)
    T = max(len(s) for s in suffixes)
    groups = length_buckets([len(s) for s in suffixes])
    pieces = []
    for rows in groups:
        who = torch.tensor([owner[b] for b in rows], device=device)
        s_ids, s_attn = right_pad([suffixes[b] for b in rows], pad_id, device)
        Ls = s_ids.shape[1]
        # Suffix token t sits at position len(prefix) + t (RoPE), at cache slot Lp + t (the mask).
        positions = (last[who] + 1).unsqueeze(1) + torch.arange(Ls, device=device)
        rows_cache = DynamicCache(ddp_cache_data=[(k.index_select(0, who), v.index_select(0, who)) for k, v in kv])
        hidden = base.model(input_ids=s_ids, attention_mask=torch.cat([attn[who], s_attn], 1),
                            position_ids=positions, past_key_values=rows_cache, use_cache=True,
                            cache_position=torch.arange(Lp, Lp + Ls, device=device)).last_hidden_state
        # Token 0 is predicted by the prefix's last position, token t > 0 by suffix position t - 1.
        first = prefix_hidden[who, last[who]].unsqueeze(1)
        picked = torch.cat([first, hidden[:, : Ls - 1]], 1)
        pieces.append(torch.nn.functional.pad(picked, (0, 0, 0, T - Ls)))
    return _in_row_order(pieces, groups, len(suffixes))


def lm_head_weight(model) -> torch.Tensor:
    """The LM head's `[V, H]` weight (tied to the embeddings for some models; never LoRA-adapted here)."""
    head = model.get_base_model().lm_head
    if getattr(head, "bias", None) is not None:
        raise ValueError("the chunked logits path assumes an LM head without bias")
    if hasattr(head.weight, "quant_state"):
        raise ValueError("the chunked logits path needs an unquantized LM head")
    return head.weight


def suffix_logits(model, prefixes: list[list[int]], suffixes: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits `[B, T, V]` predicting each suffix token given prefix ⊕ suffix<t, the suffix ids `[B, T]`
    and mask `[B, T]`. The LM head runs only on suffix positions, so prompt positions cost no V-wide
    logits. Grad mode is the caller's (wrap in torch.no_grad() for the posterior pass)."""
    picked, tokens, mask = suffix_hidden(model, prefixes, suffixes, pad_id)
    logits = model.get_base_model().lm_head(picked).float()
    return logits, tokens, mask
