"""What `intro-lite eval` scores: base models, run directories and adapters, each resolved to a base
model path and an adapter directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from intro_lite.config import load_config
from intro_lite.errors import ConfigError
from intro_lite.tiny.assets import resolve_model_path


@dataclass
class Target:
    label: str  # row name in the table
    model: str  # base model as given (HF name, local dir, or tiny name)
    model_path: str  # resolved base (what vLLM loads)
    adapter: str | None = None  # PEFT adapter dir
    run: str | None = None  # run dir the adapter came from


def resolve_targets(runs: list[Path], model: str | None, adapters: list[Path], warn=print) -> list[Target]:
    """`--model` is a base row (and the base of every adapter); a run dir is its `final/` adapter on the base
    of its config.toml; `--adapter` is that adapter on the base named in its adapter_config.json."""
    targets = [Target(model, model, resolve_model_path(model))] if model else []
    for path, is_run in [(p, True) for p in runs] + [(p, False) for p in adapters]:
        adapter = _adapter_dir(path)
        recorded = _adapter_base(adapter)
        base = model or (_run_base(path, warn) if is_run and adapter != path else None) or recorded
        if not base:
            raise ConfigError(f"{adapter / 'adapter_config.json'}: no base_model_name_or_path; pass --model")
        base_path = resolve_model_path(base)
        if model and recorded and not _same_model(recorded, base_path):
            warn(f"{adapter}: trained on {recorded}, evaluated on --model {model}")
        label = adapter.parent.name if adapter.name == "final" else adapter.name  # runs/<name>/final -> <name>
        targets.append(Target(label, base, base_path, str(adapter), str(path) if adapter != path else None))
    if not targets:
        raise ConfigError("nothing to evaluate: give --model, a run directory, or --adapter")
    from intro_lite.policy import base_model_config

    for base_path in dict.fromkeys(t.model_path for t in targets):
        base_model_config(base_path)  # a missing or unreadable base: one line now, not after the benchmarks load
    seen: dict[str, int] = {}
    for t in targets:  # unique row names
        seen[t.label] = seen.get(t.label, 0) + 1
        if seen[t.label] > 1:
            t.label = f"{t.label} ({seen[t.label]})"
    return targets


def _adapter_dir(path: Path) -> Path:
    for cand in (path / "final", path):
        if (cand / "adapter_config.json").is_file():
            return cand
    if not path.exists():
        raise ConfigError(f"{path}: not found")
    raise ConfigError(f"{path}: neither a run directory with final/adapter_config.json nor a PEFT adapter directory")


def _adapter_config(adapter: Path) -> dict:
    try:
        return json.loads((adapter / "adapter_config.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{adapter / 'adapter_config.json'}: malformed JSON: {e}") from None


def _adapter_base(adapter: Path) -> str | None:
    return _adapter_config(adapter).get("base_model_name_or_path")


def adapter_rank(adapter: Path) -> int:
    cfg = _adapter_config(adapter)
    return max([int(cfg.get("r", 8)), *map(int, (cfg.get("rank_pattern") or {}).values())])


def run_config(run: Path, warn):
    if not (run / "config.toml").is_file():
        return None
    try:
        return load_config(run / "config.toml")
    except ConfigError as e:  # e.g. its data files are gone: the adapter's own record still names the base
        warn(f"{run / 'config.toml'}: {e}; taking the base model from adapter_config.json")
        return None


def _run_base(run: Path, warn) -> str | None:
    cfg = run_config(run, warn)
    return cfg.model.name_or_path if cfg else None


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())
