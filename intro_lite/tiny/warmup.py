"""The tiny model's full-parameter SFT warm-up, and a quick HF-`generate` evaluator for it (a sanity tool;
the project's grader is math-verify in `grading.py`)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from intro_lite.grading import extract_boxed  # the project's one extractor; tiny answers are plain integers
from intro_lite.tiny.task import format_hint_prompt, format_prompt, warmup_examples


@dataclass(frozen=True)
class WarmupConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    # Share of warm-up records prompted with the answer hint x ⊕ y (the rest plain x).
    # 0.5 (greedy test accuracy, plain x vs hinted x ⊕ y, default preset otherwise): without
    # hinted data the hint *hurt* (34.5% vs 2.5%); at 0.3 the 2-layer model had not yet
    # learned to read the hint within 1000 steps (20.0% vs 31.5%); at 0.5 it had (27.5% vs
    # 76.0%; with other seeds 24.5% vs 65.5%), plain accuracy staying in the 20-50% band.
    hint_fraction: float = 0.5


def encode_example(
    tokenizer, problem: str, solution: str, *, prompt: str | None = None
) -> tuple[list[int], int]:
    """``(ids, n_prompt)`` for ``prompt + solution + eos``.

    ``prompt`` defaults to ``format_prompt(problem)`` (pass a rendered x ⊕ y to override).
    Prompt and solution are tokenised separately and concatenated, which is exactly the
    token sequence the model sees when it generates a solution after the prompt.
    """
    prompt = format_prompt(problem) if prompt is None else prompt
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sol_ids = tokenizer(solution, add_special_tokens=False)["input_ids"]
    return prompt_ids + sol_ids + [tokenizer.eos_token_id], len(prompt_ids)


def _collate(examples: Sequence[tuple[list[int], int]], pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(examples):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids)
        attention[row, :n] = 1
        # Loss on solution + eos only. Labels are set by position, not by "!= pad",
        # because pad == eos and the final eos must be learned.
        labels[row, n_prompt:n] = input_ids[row, n_prompt:n]
    return input_ids, attention, labels


def sft_warmup(
    model,
    tokenizer,
    records: Sequence[dict[str, Any]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    hint_fraction: float = 0.0,
    log_every: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Full-parameter SFT on ``prompt + solution + eos``; returns per-step losses.

    The prompt is ``problem + "\\n"``, or for a ``hint_fraction`` of the records the
    answer-hint prompt (see ``warmup_examples``); loss is on solution + eos only.
    Plain AdamW loop with linear warm-up then cosine decay to 10% of ``lr``. Records are
    visited in seeded shuffled epochs, so the run is reproducible given ``seed``.
    ``on_step(step, loss)`` is called after every optimiser step (e.g. to evaluate).
    """
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    examples = [
        encode_example(tokenizer, r["problem"], ex["solution"], prompt=ex["prompt"])
        for r, ex in zip(records, warmup_examples(records, hint_fraction=hint_fraction, seed=seed))
    ]
    if not examples:
        raise ValueError("sft_warmup needs at least one record")
    warmup_steps = max(1, steps // 20) if warmup_steps is None else warmup_steps

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    def batches() -> Iterator[list[tuple[list[int], int]]]:
        order: list[int] = []
        while True:
            if len(order) < batch_size:
                fresh = list(range(len(examples)))
                rng.shuffle(fresh)
                order.extend(fresh)
            yield [examples[i] for i in order[:batch_size]]
            del order[:batch_size]

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step, batch in zip(range(steps), batches()):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        input_ids, attention, labels = _collate(batch, tokenizer.pad_token_id)
        out = model(input_ids=input_ids, attention_mask=attention, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
        if log_every and (step + 1) % log_every == 0:
            recent = losses[-log_every:]
            print(
                f"[tiny warm-up] step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} "
                f"({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    model.eval()
    return losses


def generate_tiny(
    model,
    tokenizer,
    records: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 160,
    greedy: bool = True,
    batch_size: int = 64,
    seed: int = 0,
    hinted: bool = False,
) -> list[list[int]]:
    """Each record's generated token ids up to and including eos (pads excluded), with HF ``generate``.

    ``hinted=True`` prompts with x ⊕ y (the record's answer in the hint template) instead
    of x: the answer-conditioned model InTRO uses as its teacher.
    Sampling (``greedy=False``) is plain temperature 1, seeded.
    """
    import torch

    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only batch generation needs left padding
    out: list[list[int]] = []
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            enc = tokenizer(
                [
                    format_hint_prompt(r["problem"], str(r["answer"])) if hinted else format_prompt(r["problem"])
                    for r in chunk
                ],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=not greedy,
                    temperature=None if greedy else 1.0,
                    top_k=None if greedy else 0,
                    top_p=None if greedy else 1.0,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            for row in gen[:, enc["input_ids"].shape[1] :].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id) + 1]
                out.append(row)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out


def evaluate_tiny(model, tokenizer, records: Sequence[dict[str, Any]], **kwargs) -> tuple[float, float]:
    """``(accuracy, mean generated length in tokens)`` of ``generate_tiny(model, tokenizer, records, **kwargs)``.

    Accuracy is an exact string match of the last ``\\boxed{}`` against ``answer``; the length
    counts generated tokens up to and including eos.
    """
    if not records:
        return 0.0, 0.0
    rows = generate_tiny(model, tokenizer, records, **kwargs)
    correct = sum(extract_boxed(tokenizer.decode(row, skip_special_tokens=True)) == str(r["answer"]).strip()
                  for r, row in zip(records, rows))
    return correct / len(records), sum(map(len, rows)) / len(records)
