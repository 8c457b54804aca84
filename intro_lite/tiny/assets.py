"""The tiny model and task, built once per parameter set and cached on disk (`ensure_tiny_assets`),
and the `tiny` / `tiny-<preset>` names that resolve to them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from intro_lite.config.sources import is_tiny
from intro_lite.tiny.model import TinyModelConfig, build_tiny_model, count_parameters
from intro_lite.tiny.task import TaskConfig, generate_records, warmup_examples, write_jsonl
from intro_lite.tiny.tokenizer import build_tokenizer
from intro_lite.tiny.warmup import WarmupConfig, sft_warmup

# Bump whenever the builder's *code* changes in a way that changes the artefacts; the
# parameters themselves are hashed separately, so tuning a preset needs no bump.
# 2: answer-hinted warm-up examples (hint_fraction); tokenizer trained on the warm-up prompts.
BUILDER_VERSION = 2
MANIFEST_NAME = "tiny_assets.json"


@dataclass(frozen=True)
class TinyBuildConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    vocab_size: int = 512
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)

    def fingerprint(self) -> str:
        params = asdict(self)
        if self.task.kind == "arith":  # the choice keys came later: arith caches keep their hash
            for key in ("kind", "wrong_rate", "reveal"):
                del params["task"][key]
        if tuple(self.task.styles) == TaskConfig.styles:  # styles came later still: the others keep their hash
            del params["task"]["styles"]
        blob = json.dumps({"builder": BUILDER_VERSION, **params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


CHOICE_WARMUP = WarmupConfig(steps=2000, lr=1e-3)

PRESETS: dict[str, TinyBuildConfig] = {
    "default": TinyBuildConfig(),  # multi-step arithmetic: the dial's "no signal" end
    # The choice task (intro_lite.tiny.choice) at both ends of its dial: the answer y names the
    # branch (choice) or says nothing about it (choice_blind). 1000 test problems: SE ~1.4 points.
    # Warm-up lr 1e-3 for 2000 steps: at the default 3e-3 the 2-digit addition was learned or not
    # by chance (arithmetic given the right branch 11-64% in 6 runs); at 1e-3 it reached 70-98% in
    # 4 of 4 (two warm-up seeds at each end; docs/tiny.md).
    "choice": TinyBuildConfig(task=TaskConfig(kind="choice", reveal=1.0, n_test=1000), warmup=CHOICE_WARMUP),
    "choice_blind": TinyBuildConfig(task=TaskConfig(kind="choice", reveal=0.0, n_test=1000), warmup=CHOICE_WARMUP),
    # The choice task with a length dimension (issue 25): the warm-up demos are a third each concise,
    # verbose (the same steps, restated) and backtracking (a wrong sum, "Wait,", the right one), so
    # the policy's length can move both ways while the branch stays what reward can fix.
    "choice_styles": TinyBuildConfig(task=TaskConfig(kind="choice", reveal=1.0, n_test=1000, styles=(1 / 3, 1 / 3, 1 / 3)),
                                     warmup=CHOICE_WARMUP),
    # For the test-suite: same architecture family and file layout, near-zero accuracy.
    # Kept to a handful of optimiser steps because on a shared 2-core box a 2-thread
    # torch step can run ~10x slower while another process holds a core.
    "test": TinyBuildConfig(
        task=TaskConfig(n_train=200, n_test=40),
        vocab_size=384,
        model=TinyModelConfig(num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1),
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


def tiny_assets(name: str):
    """`tiny` / `tiny-<preset>` name the embedded demo's model and task (built on first use)."""
    if not is_tiny(name):
        return None
    return ensure_tiny_assets(preset="default" if name == "tiny" else name[len("tiny-"):])


def resolve_model_path(name_or_path: str) -> str:
    """The directory vLLM and the trainer load: the tiny model's (built on first use), else the name as given."""
    tiny = tiny_assets(name_or_path)
    return str(tiny.model_dir) if tiny is not None else name_or_path
