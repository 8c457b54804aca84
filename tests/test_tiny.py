"""Tests for the embedded tiny task/model builder (intro_lite.tiny)."""

from __future__ import annotations

import json
import operator
import re
import threading
from pathlib import Path

import pytest

from intro_lite import tiny
from intro_lite.grading import extract_boxed
from intro_lite.tiny import assets as cached_build, warmup
from intro_lite.tiny import (
    TaskConfig,
    TinyBuildConfig,
    build_tokenizer,
    encode_example,
    ensure_tiny_assets,
    evaluate_tiny,
    format_prompt,
    generate_records,
    parse_problem,
)

SMALL_TASK = TaskConfig(seed=7, n_train=600, n_test=100)


@pytest.fixture(scope="module")
def records():
    return generate_records(SMALL_TASK)


@pytest.fixture(scope="module")
def tokenizer(records):
    texts = [format_prompt(r["problem"]) + r["solution"] for r in records["train"]]
    return build_tokenizer(texts, vocab_size=384)


@pytest.fixture(scope="module")
def test_assets(tmp_path_factory):
    return ensure_tiny_assets(tmp_path_factory.mktemp("cache"), preset="test")


# ---------------------------------------------------------------- task


def test_generator_is_deterministic(records):
    assert generate_records(SMALL_TASK) == records
    other = generate_records(TaskConfig(seed=8, n_train=600, n_test=100))
    assert other["train"] != records["train"]


def test_record_schema(records):
    for split in ("train", "test"):
        for i, r in enumerate(records[split]):
            assert set(r) == {"problem", "solution", "answer", "level", "unique_id", "style"}
            assert r["unique_id"] == f"tiny/{split}/{i}"
            assert r["style"] in ("concise", "verbose")
            assert re.fullmatch(r"Level \d", r["level"])
            assert r["solution"].endswith(f"The answer is \\boxed{{{r['answer']}}}.")
            assert re.fullmatch(r"\d+", r["answer"])  # plain integers for math-verify


def test_both_styles_roughly_balanced(records):
    styles = [r["style"] for r in records["train"]]
    frac_concise = styles.count("concise") / len(styles)
    assert 0.4 < frac_concise < 0.6


_PY_OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}


def test_answers_recomputed_from_problem(records):
    for r in records["train"] + records["test"]:
        p = parse_problem(r["problem"])
        assert p.steps, r
        value = p.start
        for op, b in p.steps:
            value = _PY_OPS[op](value, b)
            assert 0 <= value <= SMALL_TASK.max_value
        assert r["answer"] == str(value)
        assert extract_boxed(r["solution"]) == str(value)
        assert r["level"] == f"Level {len(p.steps)}"
        assert SMALL_TASK.min_ops <= len(p.steps) <= SMALL_TASK.max_ops


def test_every_rationale_step_is_correct(records):
    """Each written step (either style) is true arithmetic, in problem order."""
    concise_step = re.compile(r"(\d+)([+\-*])(\d+)=(\d+)\.")
    verbose_step = re.compile(
        r"we (add|subtract|multiply) (\d+) (?:to|from|by) (\d+), which gives (\d+)\."
    )
    symbol_op = {"+": "add", "-": "sub", "*": "mul"}
    for r in records["train"][:300]:
        p = parse_problem(r["problem"])
        if r["style"] == "concise":
            steps = [(symbol_op[s], int(a), int(b), int(c)) for a, s, b, c in concise_step.findall(r["solution"])]
        else:
            steps = []
            for word, x, y, c in verbose_step.findall(r["solution"]):
                op = {"add": "add", "subtract": "sub", "multiply": "mul"}[word]
                a, b = (int(x), int(y)) if op == "mul" else (int(y), int(x))
                steps.append((op, a, b, int(c)))
        assert len(steps) == len(p.steps), r
        value = p.start
        for (op, a, b, c), (want_op, want_b) in zip(steps, p.steps):
            assert (op, a, b) == (want_op, value, want_b), r
            value = _PY_OPS[op](a, b)
            assert c == value, r


def test_concise_shorter_than_verbose(records, tokenizer):
    def mean_tokens(style):
        lens = [len(tokenizer(r["solution"])["input_ids"]) for r in records["train"] if r["style"] == style]
        return sum(lens) / len(lens)

    assert mean_tokens("concise") * 1.5 < mean_tokens("verbose")


def test_test_split_disjoint_from_train(records):
    train = {r["problem"] for r in records["train"]}
    test = [r["problem"] for r in records["test"]]
    assert len(set(test)) == len(test)
    assert not train & set(test)


def test_test_split_independent_of_train_size(records):
    bigger = generate_records(TaskConfig(seed=7, n_train=900, n_test=100))
    assert bigger["test"] == records["test"]


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_task_text(records, tokenizer):
    for r in records["train"][:200] + records["test"]:
        for text in (format_prompt(r["problem"]), r["solution"], format_prompt(r["problem"]) + r["solution"]):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == text
    unseen = "Start with 123. Multiply by 45. What is the result? ü"
    assert tokenizer.decode(tokenizer(unseen)["input_ids"]) == unseen  # byte-level: no unk


def test_tokenizer_splits_digits_and_has_eos_pad(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("14+7=21. 1234")["input_ids"])
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == list("147211234")
    assert tokenizer.eos_token == tiny.EOS_TOKEN
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer("abc")["input_ids"][0] != tokenizer.eos_token_id  # no bos added


def test_encode_example_masks_prompt(records, tokenizer):
    r = records["train"][0]
    ids, n_prompt = encode_example(tokenizer, r["problem"], r["solution"])
    assert tokenizer.decode(ids[:n_prompt]) == r["problem"] + "\n"
    assert tokenizer.decode(ids[n_prompt:-1]) == r["solution"]
    assert ids[-1] == tokenizer.eos_token_id


def test_warmup_data_mixes_exact_hint_prompts_with_unchanged_plain_ones(records, tokenizer):
    """A share of the warm-up prompts is x ⊕ y rendered exactly as the trainer renders it
    (its default template and its own render function); the rest are the unchanged x → z
    examples; the target is always the record's solution and only it is trained on."""
    from intro_lite.config import DataConfig
    from intro_lite.data.problems import Problem, render_prompt

    data_cfg = DataConfig()
    assert tiny.HINT_TEMPLATE == data_cfg.hint_template
    assert tiny.PROMPT_TEMPLATE == data_cfg.prompt_template
    train = records["train"]
    before = json.dumps(train)
    examples = tiny.warmup_examples(train, hint_fraction=0.4, seed=0)
    assert json.dumps(train) == before  # records untouched
    assert len(examples) == len(train)

    n_hinted = 0
    for ex, r in zip(examples, train):
        assert ex["solution"] == r["solution"] and ex["style"] == r["style"]
        as_trained = Problem(id=r["unique_id"], question=r["problem"], answer=extract_boxed(r["solution"]))
        if ex["hinted"]:
            n_hinted += 1
            assert ex["prompt"] == render_prompt(data_cfg.hint_template, as_trained)
            assert ex["prompt"] == (
                f"{r['problem']}\nThe final answer is {r['answer']}. Let me justify it step by step.\n"
            )
        else:
            assert ex["prompt"] == render_prompt(data_cfg.prompt_template, as_trained) == r["problem"] + "\n"
    # Stratified by style: exactly the fraction of each style, so both groups stay ~50/50.
    for style in ("concise", "verbose"):
        n_style = sum(r["style"] == style for r in train)
        assert sum(ex["hinted"] for ex in examples if ex["style"] == style) == round(0.4 * n_style)
    assert n_hinted == pytest.approx(0.4 * len(train), abs=1)
    hinted = [ex for ex in examples if ex["hinted"]]
    assert 0.4 < sum(ex["style"] == "concise" for ex in hinted) / len(hinted) < 0.6

    assert tiny.warmup_examples(train, hint_fraction=0.4, seed=0) == examples  # deterministic
    assert not any(ex["hinted"] for ex in tiny.warmup_examples(train, hint_fraction=0.0, seed=0))
    assert all(ex["hinted"] for ex in tiny.warmup_examples(train, hint_fraction=1.0, seed=0))
    with pytest.raises(ValueError):
        tiny.warmup_examples(train, hint_fraction=1.5, seed=0)

    # Encoded as prompt (masked) + solution + eos: loss never sees the hint.
    ex, r = hinted[0], train[examples.index(hinted[0])]
    ids, n_prompt = encode_example(tokenizer, r["problem"], ex["solution"], prompt=ex["prompt"])
    assert tokenizer.decode(ids[:n_prompt]) == ex["prompt"]
    assert tokenizer.decode(ids[n_prompt:-1]) == r["solution"]
    assert ids[-1] == tokenizer.eos_token_id


def test_sft_warmup_trains_on_hinted_prompts(records, tokenizer, monkeypatch):
    """sft_warmup encodes exactly warmup_examples(records, hint_fraction, seed)."""
    seen: list[str] = []
    real = tiny.encode_example

    def spy(tok, problem, solution, *, prompt=None):
        seen.append(prompt)
        return real(tok, problem, solution, prompt=prompt)

    monkeypatch.setattr(warmup, "encode_example", spy)
    model = tiny.build_tiny_model(tokenizer, tiny.TinyModelConfig(num_hidden_layers=1))
    tiny.sft_warmup(model, tokenizer, records["train"], steps=1, batch_size=2, lr=1e-3, seed=5, hint_fraction=0.5)
    want = tiny.warmup_examples(records["train"], hint_fraction=0.5, seed=5)
    assert seen == [ex["prompt"] for ex in want]
    assert sum("\nThe final answer is " in p for p in seen) == sum(ex["hinted"] for ex in want) > 0


def test_sft_warmup_is_deterministic(records, tokenizer):
    def run():
        model = tiny.build_tiny_model(tokenizer, tiny.TinyModelConfig(num_hidden_layers=1))
        return tiny.sft_warmup(model, tokenizer, records["train"], steps=3, batch_size=4, lr=1e-3, seed=3)

    first, second = run(), run()
    assert first == second
    assert all(loss > 0 for loss in first)


# ---------------------------------------------------------------- cached build


def test_preset_fingerprint_tracks_parameters():
    base = TinyBuildConfig()
    assert base.fingerprint() == TinyBuildConfig().fingerprint()
    assert base.fingerprint() != TinyBuildConfig(vocab_size=base.vocab_size + 1).fingerprint()
    assert base.fingerprint() != tiny.PRESETS["test"].fingerprint()
    other_hint = tiny.WarmupConfig(hint_fraction=base.warmup.hint_fraction / 2)
    assert base.fingerprint() != TinyBuildConfig(warmup=other_hint).fingerprint()


def test_cache_root_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("INTRO_LITE_CACHE", str(tmp_path))
    assert tiny.default_cache_root() == tmp_path
    monkeypatch.delenv("INTRO_LITE_CACHE")
    assert tiny.default_cache_root() == Path.home() / ".cache" / "intro-lite"


def test_test_preset_builds_loadable_qwen2(test_assets):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(test_assets.model_dir)
    tok = AutoTokenizer.from_pretrained(test_assets.model_dir)
    cfg = model.config
    assert cfg.model_type == "qwen2"
    assert cfg.hidden_size // cfg.num_attention_heads == 64
    assert getattr(cfg, "head_dim", 64) == 64
    assert cfg.tie_word_embeddings is False
    assert cfg.vocab_size == len(tok)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert next(model.parameters()).dtype == torch.float32
    gen = GenerationConfig.from_pretrained(test_assets.model_dir)
    assert gen.eos_token_id == tok.eos_token_id == tok.pad_token_id

    train = tiny.read_jsonl(test_assets.train_file)
    test = tiny.read_jsonl(test_assets.test_file)
    assert len(train) == tiny.PRESETS["test"].task.n_train
    assert not {r["problem"] for r in train} & {r["problem"] for r in test}

    # AutoTokenizer (what the trainer and vLLM load) resolves to a Qwen2 tokenizer class;
    # it must still encode exactly like the tokenizer.json we trained.
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(test_assets.model_dir / "tokenizer.json"))
    for r in test:
        text = format_prompt(r["problem"]) + r["solution"]
        assert tok(text)["input_ids"] == raw.encode(text).ids
        assert tok.decode(tok(text)["input_ids"]) == text

    acc, mean_len = evaluate_tiny(model, tok, test[:8], max_new_tokens=24)
    assert 0.0 <= acc <= 1.0
    assert 0 < mean_len <= 24
    acc, mean_len = evaluate_tiny(model, tok, test[:8], max_new_tokens=24, hinted=True)
    assert 0.0 <= acc <= 1.0
    assert 0 < mean_len <= 24

    # The build trained on hinted prompts, and its tokenizer learned the hint's words.
    manifest = tiny.load_manifest(test_assets)
    cfg = tiny.PRESETS["test"]
    assert manifest["builder_version"] == tiny.BUILDER_VERSION
    want = tiny.warmup_examples(train, hint_fraction=cfg.warmup.hint_fraction, seed=cfg.warmup.seed)
    assert manifest["n_hinted_examples"] == sum(ex["hinted"] for ex in want) > 0
    hint_text = tiny.format_hint_prompt(test[0]["problem"], test[0]["answer"])
    assert tok.decode(tok(hint_text)["input_ids"]) == hint_text
    assert len(tok(hint_text)["input_ids"]) < len(hint_text) / 2  # merged words, not bytes


def test_second_call_reuses_cache(test_assets, monkeypatch):
    manifest = test_assets.model_dir.parent / tiny.MANIFEST_NAME
    before = manifest.stat().st_mtime_ns

    def must_not_build(*args, **kwargs):
        raise AssertionError("cache was rebuilt")

    monkeypatch.setattr(cached_build, "_build_into", must_not_build)
    again = ensure_tiny_assets(test_assets.model_dir.parent.parent, preset="test")
    assert again == test_assets
    assert manifest.stat().st_mtime_ns == before
    assert json.loads(manifest.read_text())["fingerprint"] == tiny.PRESETS["test"].fingerprint()


def _fake_build(counter, *, delay=0.0, fail=False):
    def build(out: Path, cfg, *, verbose=False):
        counter.append(1)
        for name in ("train.jsonl", "test.jsonl"):
            (out / name).write_text("")
        (out / "model").mkdir()
        if fail:
            raise RuntimeError("simulated crash mid-build")
        threading.Event().wait(delay)
        return {"fingerprint": cfg.fingerprint()}

    return build


def test_crash_mid_build_leaves_no_cache(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(cached_build, "_build_into", _fake_build(calls, fail=True))
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure_tiny_assets(tmp_path, preset="test")
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []

    monkeypatch.setattr(cached_build, "_build_into", _fake_build(calls))
    assets = ensure_tiny_assets(tmp_path, preset="test")
    assert assets.train_file.exists() and len(calls) == 2


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(cached_build, "_build_into", _fake_build(calls, delay=0.5))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_tiny_assets(tmp_path, preset="test")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 3 and len(set(results)) == 1
