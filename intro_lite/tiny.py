"""Embedded default: a tiny Qwen2 model and a synthetic arithmetic task, built on first use.

``intro-lite train recipes/tiny.toml`` and the test-suite need a model that (a) runs on a
laptop CPU, (b) loads in vLLM's CPU backend, and (c) is *partly* right on its task, so that
InTRO has correct rationales to keep and something left to learn.  Nothing may be
downloaded, so everything here is made from scratch and cached on disk:

1. ``generate_records`` writes a MATH-like multi-step arithmetic task whose solutions come
   in a *concise* and a *verbose* style (same reasoning, very different length), or, with
   ``TaskConfig.kind = "choice"``, the branch-choice task of ``intro_lite.tiny_choice``.
2. ``build_tokenizer`` trains a small byte-level BPE on the task text.
3. ``build_tiny_model`` makes a randomly initialised ``Qwen2ForCausalLM`` (head_dim 64).
4. ``sft_warmup`` fine-tunes it on a 50/50 mix of both styles. A fraction of the warm-up
   examples (``WarmupConfig.hint_fraction``) is prompted with the trainer's answer-hint
   template x ⊕ y instead of plain x, so that, like an LLM reading a hint in context, the
   tiny model can condition on a given answer: InTRO's teacher π(z|x⊕y) is then in
   distribution rather than an untrained corner of the model (see ``docs/tiny.md``).
5. ``ensure_tiny_assets`` runs 1-4 once per parameter set and caches the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from intro_lite.config import DataConfig
from intro_lite.grading import extract_boxed  # the project's one extractor; tiny answers are plain integers

# Bump whenever the builder's *code* changes in a way that changes the artefacts; the
# parameters themselves are hashed separately, so tuning a preset needs no bump.
# 2: answer-hinted warm-up examples (hint_fraction); tokenizer trained on the warm-up prompts.
BUILDER_VERSION = 2

EOS_TOKEN = "<|endoftext|>"
# The trainer's default templates, taken from its config so the two can never drift apart:
# x (no chat template) and x ⊕ y (the answer-hint prompt InTRO's teacher reads).
PROMPT_TEMPLATE = DataConfig().prompt_template
HINT_TEMPLATE = DataConfig().hint_template
MANIFEST_NAME = "tiny_assets.json"

# --------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------

_OPS = ("add", "sub", "mul")
_OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
_PROBLEM_PHRASE = {"add": "Add {b}.", "sub": "Subtract {b}.", "mul": "Multiply by {b}."}
_VERBOSE_PHRASE = {
    "add": "we add {b} to {a}, which gives {c}.",
    "sub": "we subtract {b} from {a}, which gives {c}.",
    "mul": "we multiply {a} by {b}, which gives {c}.",
}
_PROBLEM_RE = re.compile(r"(Add|Subtract|Multiply by) (\d+)\.")
_PROBLEM_WORD_TO_OP = {"Add": "add", "Subtract": "sub", "Multiply by": "mul"}


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs of the synthetic task (all values stay non-negative integers).

    The defaults were tuned with the default warm-up to land near 30% test accuracy.
    With results capped at 99 the tiny model went from ~20% after a 700-step warm-up to
    ~90% after 800 steps: a phase change far too brittle to aim at. With up to 3-digit
    results, carries keep per-step accuracy improving slowly, so accuracy after a fixed
    budget is stable and falls with the number of operations (Level 2 > 3 > 4).
    """

    seed: int = 0
    n_train: int = 20000
    n_test: int = 200
    min_ops: int = 2
    max_ops: int = 4
    max_start: int = 9  # start value drawn from 1..max_start
    max_operand: int = 49  # add/sub operands drawn from 1..max_operand
    max_value: int = 499  # no intermediate result may exceed this
    max_mul_input: int = 49  # only multiply values up to this (2-digit x 1-digit)
    max_multiplier: int = 9  # multipliers drawn from 2..max_multiplier
    # "arith": the multi-step arithmetic above (the dial's "no signal" end: docs/tiny.md);
    # "choice": intro_lite.tiny_choice, a branch decision the warm-up leaves uncertain, where
    # wrong_rate is the warm-up demos' wrong-branch rate and reveal (the dial) the share of
    # problems whose answer y shows the branch.
    kind: str = "arith"
    wrong_rate: float = 0.5
    reveal: float = 1.0


@dataclass(frozen=True)
class Problem:
    start: int
    steps: tuple[tuple[str, int], ...]  # (op, operand) pairs, applied left to right

    def values(self) -> list[int]:
        """Intermediate values, starting value first, final answer last."""
        out = [self.start]
        for op, b in self.steps:
            out.append(apply_op(out[-1], op, b))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]


def apply_op(a: int, op: str, b: int) -> int:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    raise ValueError(f"unknown op {op!r}")


def sample_problem(rng: random.Random, cfg: TaskConfig) -> Problem:
    start = value = rng.randint(1, cfg.max_start)
    steps: list[tuple[str, int]] = []
    for _ in range(rng.randint(cfg.min_ops, cfg.max_ops)):
        # Draw the op first (uniform over the ops that can be legal here) so that the op
        # mix stays balanced, then an operand that keeps the value in [0, max_value].
        candidates = []
        if value + 1 <= cfg.max_value:
            candidates.append("add")
        if value >= 1:
            candidates.append("sub")
        if 1 <= value <= cfg.max_mul_input and value * 2 <= cfg.max_value:
            candidates.append("mul")
        op = rng.choice(candidates)
        if op == "add":
            b = rng.randint(1, min(cfg.max_operand, cfg.max_value - value))
        elif op == "sub":
            b = rng.randint(1, min(cfg.max_operand, value))
        else:
            b = rng.randint(2, min(cfg.max_multiplier, cfg.max_value // value))
        steps.append((op, b))
        value = apply_op(value, op, b)
    return Problem(start, tuple(steps))


def format_problem(p: Problem) -> str:
    ops = " ".join(_PROBLEM_PHRASE[op].format(b=b) for op, b in p.steps)
    return f"Start with {p.start}. {ops} What is the result?"


def parse_problem(text: str) -> Problem:
    """Inverse of ``format_problem``; lets tests recompute answers from the problem text."""
    m = re.match(r"Start with (\d+)\. ", text)
    if not m:
        raise ValueError(f"not a tiny problem: {text!r}")
    steps = tuple((_PROBLEM_WORD_TO_OP[w], int(b)) for w, b in _PROBLEM_RE.findall(text))
    return Problem(int(m.group(1)), steps)


def format_solution(p: Problem, style: str) -> str:
    values = p.values()
    if style == "concise":
        lines = [
            f"{values[i]}{_OP_SYMBOL[op]}{b}={values[i + 1]}." for i, (op, b) in enumerate(p.steps)
        ]
        body = " ".join(lines)
    elif style == "verbose":
        n = len(p.steps)
        parts = [f"We start with {p.start}."]
        for i, (op, b) in enumerate(p.steps):
            lead = "First," if i == 0 else ("Finally," if i == n - 1 else "Next,")
            parts.append(f"{lead} " + _VERBOSE_PHRASE[op].format(a=values[i], b=b, c=values[i + 1]))
        parts.append(f"So the result is {values[-1]}.")
        body = " ".join(parts)
    else:
        raise ValueError(f"unknown style {style!r}")
    return f"{body} The answer is \\boxed{{{values[-1]}}}."


def make_record(p: Problem, style: str, split: str, index: int) -> dict[str, str]:
    return {
        "problem": format_problem(p),
        "solution": format_solution(p, style),
        "answer": str(p.answer),
        "level": f"Level {len(p.steps)}",  # level = number of chained operations
        "unique_id": f"tiny/{split}/{index}",
        "style": style,
    }


def generate_records(cfg: TaskConfig) -> dict[str, list[dict[str, str]]]:
    """Deterministic ``{"train": [...], "test": [...]}``; no test problem appears in train.

    The test split is drawn first and its problem texts are excluded from train, so
    changing ``n_train`` never changes the test split.
    """
    if cfg.kind == "choice":
        from intro_lite.tiny_choice import generate_choice_records

        return generate_choice_records(cfg)
    if cfg.kind != "arith":
        raise ValueError(f"unknown task kind {cfg.kind!r}; choose arith or choice")
    rng = random.Random(cfg.seed)
    out: dict[str, list[dict[str, str]]] = {"test": [], "train": []}
    seen: set[str] = set()
    for split, n in (("test", cfg.n_test), ("train", cfg.n_train)):
        attempts = 0
        while len(out[split]) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise RuntimeError(f"task space too small for {n} unique {split} problems")
            p = sample_problem(rng, cfg)
            text = format_problem(p)
            if text in seen:  # unique within a split too: duplicates would only skew accuracy
                continue
            seen.add(text)
            # A fair coin per record: both splits are ~50/50 concise/verbose, and the
            # style is independent of the problem.
            style = "concise" if rng.random() < 0.5 else "verbose"
            out[split].append(make_record(p, style, split, len(out[split])))
    return out


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(problem: str) -> str:
    return PROMPT_TEMPLATE.replace("{question}", problem)


def format_hint_prompt(problem: str, answer: str) -> str:
    """x ⊕ y, rendered as the trainer renders it (``intro_lite.data.render_prompt``)."""
    return HINT_TEMPLATE.replace("{question}", problem).replace("{answer}", answer)


def warmup_examples(
    records: Sequence[dict[str, Any]], *, hint_fraction: float, seed: int
) -> list[dict[str, Any]]:
    """The SFT warm-up data: one ``{"prompt", "solution", "hinted", "style"}`` per record.

    Within each style, exactly ``round(hint_fraction * n_style)`` records (a seeded random
    choice) get the answer-hint prompt ``format_hint_prompt(problem, answer)``; the rest
    keep the plain prompt. Stratifying by style keeps both groups at the records' style mix
    (~50/50), so the hint never predicts the style. The target is the record's own solution,
    or its ``warmup_solution`` if it has one (the choice task's demo, whose hint shows the
    demo's own ``warmup_answer``); only it (plus eos) is trained on.
    """
    if not 0.0 <= hint_fraction <= 1.0:
        raise ValueError(f"hint_fraction must be in [0, 1], got {hint_fraction}")
    rng = random.Random(f"tiny-hint-{seed}")  # independent of the batch-order stream
    hinted: set[int] = set()
    for style in sorted({str(r.get("style")) for r in records}):
        idx = [i for i, r in enumerate(records) if str(r.get("style")) == style]
        hinted.update(rng.sample(idx, round(hint_fraction * len(idx))))
    return [
        {
            "prompt": format_hint_prompt(r["problem"], str(r.get("warmup_answer", r["answer"])))
            if i in hinted
            else format_prompt(r["problem"]),
            "solution": r.get("warmup_solution", r["solution"]),
            "hinted": i in hinted,
            "style": r.get("style"),
        }
        for i, r in enumerate(records)
    ]


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

# Qwen2's pre-tokenizer pattern: every digit is its own pre-token (so numbers are spelled
# digit by digit and arithmetic is learnable) and words keep their leading space.
_QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast``.

    Byte-level with the full 256-byte alphabet means any text round-trips and no unk
    token is needed. ``eos`` doubles as ``pad``; there is no bos (prompts start bare).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    return hf


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    # vLLM's CPU attention backend supports only a few head sizes; 64 is the safe one, so
    # hidden_size is always num_attention_heads * 64.
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    num_hidden_layers: int = 2
    intermediate_multiple: int = 4
    max_position_embeddings: int = 512
    seed: int = 0

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * 64


def build_tiny_model(tokenizer, cfg: ModelConfig | None = None):
    """Randomly initialised fp32 ``Qwen2ForCausalLM`` sized for ``tokenizer``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = cfg or ModelConfig()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_multiple * cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=64,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=10000.0,
        # Untied: vLLM's LoRA path handles a separate lm_head more reliably.
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_sliding_window=False,
        dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# SFT warm-up
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Evaluation (sanity tool; the real grader is math-verify elsewhere)
# --------------------------------------------------------------------------------------


def evaluate_tiny(
    model,
    tokenizer,
    records: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 160,
    greedy: bool = True,
    batch_size: int = 64,
    seed: int = 0,
    hinted: bool = False,
) -> tuple[float, float]:
    """``(accuracy, mean generated length in tokens)`` with HF ``generate``.

    ``hinted=True`` prompts with x ⊕ y (the record's answer in the hint template) instead
    of x: the answer-conditioned model InTRO uses as its teacher.

    Accuracy is an exact string match of the last ``\\boxed{}`` against ``answer``.
    The length counts generated tokens up to and including eos (pads excluded).
    Sampling (``greedy=False``) is plain temperature 1, seeded.
    """
    import torch

    if not records:
        return 0.0, 0.0
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only batch generation needs left padding
    correct = 0
    total_len = 0
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
            new = gen[:, enc["input_ids"].shape[1] :]
            for r, row in zip(chunk, new.tolist()):
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id) + 1]
                total_len += len(row)
                text = tokenizer.decode(row, skip_special_tokens=True)
                if extract_boxed(text) == str(r["answer"]).strip():
                    correct += 1
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return correct / len(records), total_len / len(records)


# --------------------------------------------------------------------------------------
# Cached build
# --------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class TinyBuildConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    vocab_size: int = 512
    model: ModelConfig = field(default_factory=ModelConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)

    def fingerprint(self) -> str:
        params = asdict(self)
        if self.task.kind == "arith":  # the choice keys came later: arith caches keep their hash
            for key in ("kind", "wrong_rate", "reveal"):
                del params["task"][key]
        blob = json.dumps({"builder": BUILDER_VERSION, **params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


PRESETS: dict[str, TinyBuildConfig] = {
    "default": TinyBuildConfig(),  # multi-step arithmetic: the dial's "no signal" end
    # The choice task (intro_lite.tiny_choice) at both ends of its dial: the answer y names the
    # branch (choice) or says nothing about it (choice_blind). 1000 test problems: SE ~1.4 points.
    "choice": TinyBuildConfig(task=TaskConfig(kind="choice", reveal=1.0, n_test=1000)),
    "choice_blind": TinyBuildConfig(task=TaskConfig(kind="choice", reveal=0.0, n_test=1000)),
    # For the test-suite: same architecture family and file layout, near-zero accuracy.
    # Kept to a handful of optimiser steps because on a shared 2-core box a 2-thread
    # torch step can run ~10x slower while another process holds a core.
    "test": TinyBuildConfig(
        task=TaskConfig(n_train=200, n_test=40),
        vocab_size=384,
        model=ModelConfig(num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1),
        warmup=WarmupConfig(steps=8, batch_size=8, lr=3e-3),
    ),
}


@dataclass(frozen=True)
class TinyAssets:
    model_dir: Path  # HF model + tokenizer + generation_config
    train_file: Path  # MATH-like jsonl
    test_file: Path


def default_cache_root() -> Path:
    env = os.environ.get("INTRO_LITE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "intro-lite"


def _assets_in(root: Path) -> TinyAssets:
    return TinyAssets(
        model_dir=root / "model", train_file=root / "train.jsonl", test_file=root / "test.jsonl"
    )


def _is_complete(root: Path) -> bool:
    # The manifest is written last, and the directory only gets its final name by an
    # atomic rename after that, so its presence means the build finished.
    return (root / MANIFEST_NAME).is_file()


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock so a second caller waits instead of building twice."""
    try:
        import fcntl
    except ImportError:  # non-POSIX: the atomic rename alone still keeps the cache sane
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_into(out: Path, cfg: TinyBuildConfig, *, verbose: bool = False) -> dict[str, Any]:
    """Build all artefacts into ``out``; returns the manifest (written by the caller)."""
    t0 = time.perf_counter()
    records = generate_records(cfg.task)
    assets = _assets_in(out)
    write_jsonl(records["train"], assets.train_file)
    write_jsonl(records["test"], assets.test_file)

    # Tokenizer sees the warm-up text only (train problems, both solution styles, and the
    # hint prompts, so the hint's words get merges like any other task text).
    examples = warmup_examples(records["train"], hint_fraction=cfg.warmup.hint_fraction, seed=cfg.warmup.seed)
    tokenizer = build_tokenizer((ex["prompt"] + ex["solution"] for ex in examples), cfg.vocab_size)
    model = build_tiny_model(tokenizer, cfg.model)
    t_setup = time.perf_counter() - t0

    losses = sft_warmup(
        model,
        tokenizer,
        records["train"],
        steps=cfg.warmup.steps,
        batch_size=cfg.warmup.batch_size,
        lr=cfg.warmup.lr,
        seed=cfg.warmup.seed,
        hint_fraction=cfg.warmup.hint_fraction,
        log_every=100 if verbose else 0,
    )
    model.save_pretrained(assets.model_dir, safe_serialization=True)
    tokenizer.save_pretrained(assets.model_dir)
    tail = losses[-20:]
    return {
        "builder_version": BUILDER_VERSION,
        "fingerprint": cfg.fingerprint(),
        "config": asdict(cfg),
        "n_params": count_parameters(model),
        "vocab_size": len(tokenizer),
        "n_hinted_examples": sum(ex["hinted"] for ex in examples),
        "final_loss": sum(tail) / len(tail),
        "setup_seconds": round(t_setup, 2),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }


def ensure_tiny_assets(
    cache_dir: Path | str | None = None, *, preset: str = "default", verbose: bool = False
) -> TinyAssets:
    """Return the tiny model and task files, building them on first use.

    Artefacts live in ``<cache_dir>/tiny-<preset>-<hash>`` where ``cache_dir`` defaults to
    ``$INTRO_LITE_CACHE`` or ``~/.cache/intro-lite`` and ``hash`` covers every builder
    parameter, so changing a preset builds a fresh directory. The build goes into a temp
    dir beside the target and is renamed into place, so a crash never leaves a half-built
    cache behind; concurrent callers serialise on a lock file and reuse the result.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    final = root / f"tiny-{preset}-{cfg.fingerprint()}"
    if _is_complete(final):
        return _assets_in(final)

    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root / f".{final.name}.lock"):
        if _is_complete(final):  # someone else finished while we waited for the lock
            return _assets_in(final)
        # Holding the lock, any leftover temp dir of this name is from a crashed build.
        for stale in root.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # incomplete (no manifest): not ours to trust
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            if verbose:
                print(f"[tiny] building {preset!r} assets into {final}", flush=True)
            manifest = _build_into(tmp, cfg, verbose=verbose)
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            try:
                os.replace(tmp, final)
            except OSError:
                # Only possible without flock (e.g. another host on a shared FS): the
                # other builder won, and its result is equivalent to ours.
                if not _is_complete(final):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _assets_in(final)


def load_manifest(assets: TinyAssets) -> dict[str, Any]:
    return json.loads((assets.model_dir.parent / MANIFEST_NAME).read_text())
