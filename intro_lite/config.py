"""Typed, validated, layered configuration.

Layers, later wins: the packaged `intro_lite.toml` defaults -> the recipe -> `--set key=value`.
Every key must exist in the dataclasses below; an unknown key or a wrong type is a one-line
`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from intro_lite.errors import ConfigError
# Each objective owns its table's dataclass (defaults written once, there).
from intro_lite.objectives import (DrGrpoConfig, GrpoConfig, IapoConfig, IntroConfig, LatroConfig, RaftPPConfig,
                                   ReinforceRejConfig, ReproConfig, available, config_kwargs, get_objective)

# The project defaults live at the repository's top level; the dataclass defaults below mirror them
# (a test keeps the two equal) so a non-editable install without the file behaves the same.
DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "intro_lite.toml"


@dataclass
class ModelConfig:
    name_or_path: str = "tiny"  # HF name or local dir; "tiny" = the embedded demo model
    quantization: Literal["nf4", "none"] = "nf4"  # trainer's base weights (bitsandbytes 4-bit NF4)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    init_adapter: str = ""  # start from this saved adapter (e.g. a sweep's shared SFT warm-up) instead of a fresh one


@dataclass
class DataConfig:
    source: str | list[str] = "tiny"  # local .jsonl/.json/.parquet path(s), an HF dataset name, or "tiny"
    split: str = "train"  # HF split (ignored for local files)
    problem_field: str = "problem"
    solution_field: str = "solution"
    answer_field: str = ""  # empty: the gold answer is the last \boxed{} of the solution
    id_field: str = "unique_id"
    level_field: str = "level"
    levels: list[int] = field(default_factory=list)  # empty = keep all levels
    exclude_ids_from: str = ""  # jsonl whose `id_field` values are dropped (e.g. MATH500)
    prompt_template: str = "{question}\n"  # x: no chat template, as in the paper
    hint_template: str = "{question}\nThe final answer is {answer}. Let me justify it step by step.\n"  # x ⊕ y
    max_prompt_tokens: int = 512


@dataclass
class RolloutConfig:
    group_size: int = 4  # G rationales per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.3
    quantization: Literal["none", "bitsandbytes"] = "none"  # vLLM's base weights (GPU only)
    enforce_eager: bool = True


@dataclass
class TrainConfig:
    steps: int = 100
    prompts_per_step: int = 128  # the paper's batch size
    micro_batch_size: int = 4  # rationales per forward/backward
    lr: float = 1e-5
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50  # steps; 0 = only final/
    max_nonfinite_steps: int = 3  # non-finite loss/grad steps are skipped; more than this in a row aborts
    keep_checkpoints: int = 2
    max_rollout_tokens: int = 0  # budget: stop once this many rationale tokens were generated; 0 = run all steps


@dataclass
class EvalConfig:
    """Held-out scoring before and after training (and the defaults of `intro-lite eval`)."""

    source: str = ""  # a benchmark name (as in `intro-lite eval`), a file, or "tiny"; "" = no eval during training
    limit: int = 0  # 0 = all problems
    samples: int = 1  # k samples per problem (avg@k)
    temperature: float = 0.6  # the paper's evaluation sampling
    top_p: float = 0.95
    max_new_tokens: int = 1024
    seed: int = 0
    every: int = 0  # also score every N steps (accuracy-vs-step curves); 0 = before and after only


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    objective: str = "intro"
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    intro: IntroConfig = field(default_factory=IntroConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    dr_grpo: DrGrpoConfig = field(default_factory=DrGrpoConfig)
    raft_pp: RaftPPConfig = field(default_factory=RaftPPConfig)
    reinforce_rej: ReinforceRejConfig = field(default_factory=ReinforceRejConfig)
    latro: LatroConfig = field(default_factory=LatroConfig)
    iapo: IapoConfig = field(default_factory=IapoConfig)
    repro: ReproConfig = field(default_factory=ReproConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def objective_kwargs(self) -> dict:
        """The chosen objective's own table as `compute` keyword arguments ({} if it has none)."""
        return config_kwargs(getattr(self, get_objective(self.objective).section, None))


# ---------------------------------------------------------------------------------------------
# Loading and merging


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-5` -> (["train", "lr"], 3e-5). Values are TOML literals; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # e.g. --set model.name_or_path=Qwen/Qwen2.5-1.5B
    return key.split("."), value


def _nested(path: list[str], value: Any) -> dict:
    d: Any = value
    for part in reversed(path):
        d = {part: d}
    return d


def load_config(recipe: str | Path | None = None, overrides: list[str] = (), defaults: Path = DEFAULTS_FILE) -> Config:
    layers: list[tuple[str, dict]] = [(str(defaults), _read_toml(defaults))] if defaults.is_file() else []
    if recipe is not None:
        layers.append((str(recipe), _read_toml(Path(recipe))))
    for text in overrides:
        path, value = parse_override(text)
        layers.append((f"--set {text}", _nested(path, value)))
    merged: dict = {}
    for source, layer in layers:
        _check_keys(Config, layer, source, prefix="")
        merged = _merge(merged, layer)
    cfg = _build(Config, merged, "config", prefix="")
    validate(cfg)
    return cfg


def _check_keys(cls: type, data: dict, source: str, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known here: {known})")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{prefix}{key}' must be a table")
            _check_keys(hints[key], value, source, prefix=f"{prefix}{key}.")


def _build(cls: type, data: dict, source: str, prefix: str):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, value, key = hints[f.name], data[f.name], f"{prefix}{f.name}"
        kwargs[f.name] = _build(tp, value, source, key + ".") if dataclasses.is_dataclass(tp) else _coerce(tp, value, key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation; int -> float is the only silent widening."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"'{key}' must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = []
        for arm in get_args(tp):
            try:
                return _coerce(arm, value, key)
            except ConfigError as e:
                errors.append(str(e).split(" must be ", 1)[-1])
        raise ConfigError(f"'{key}' must be {' or '.join(errors)}")
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


# ---------------------------------------------------------------------------------------------
# Range checks that the type system can't express


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"'{key}' {msg}")


def validate(cfg: Config) -> None:
    _require(cfg.name != "" and "/" not in cfg.name, "name", "must be a non-empty name without '/'")
    _require(cfg.objective in available(), "objective", f"must be one of {available()}, got {cfg.objective!r}")
    r, t, lo = cfg.rollout, cfg.train, cfg.lora
    _require(r.group_size >= 1, "rollout.group_size", f"must be >= 1, got {r.group_size}")
    _require(0 < r.temperature <= 2, "rollout.temperature", f"must be in (0, 2] (vLLM's range), got {r.temperature}")
    _require(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    _require(r.max_new_tokens >= 1, "rollout.max_new_tokens", f"must be >= 1, got {r.max_new_tokens}")
    _require(
        r.max_model_len > cfg.data.max_prompt_tokens,
        "rollout.max_model_len",
        f"must exceed data.max_prompt_tokens ({cfg.data.max_prompt_tokens}), got {r.max_model_len}",
    )
    _require(0 < r.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", "must be in (0, 1]")
    if r.quantization != "none":
        import torch

        on_gpu = cfg.model.device == "cuda" or (cfg.model.device == "auto" and torch.cuda.is_available())
        _require(on_gpu, "rollout.quantization", f"= {r.quantization!r} needs a CUDA GPU (vLLM's CPU backend can't run it)")
    _require(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    _require(t.prompts_per_step >= 1, "train.prompts_per_step", f"must be >= 1, got {t.prompts_per_step}")
    _require(t.micro_batch_size >= 1, "train.micro_batch_size", f"must be >= 1, got {t.micro_batch_size}")
    _require(0 < t.lr < 1, "train.lr", f"must be in (0, 1), got {t.lr}")
    _require(t.max_grad_norm > 0, "train.max_grad_norm", f"must be > 0, got {t.max_grad_norm}")
    _require(t.max_rollout_tokens >= 0, "train.max_rollout_tokens", f"must be >= 0, got {t.max_rollout_tokens}")
    _require(cfg.eval.every >= 0, "eval.every", f"must be >= 0, got {cfg.eval.every}")
    _require(t.max_nonfinite_steps >= 0, "train.max_nonfinite_steps", f"must be >= 0, got {t.max_nonfinite_steps}")
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {t.keep_checkpoints}")
    _require(t.checkpoint_every >= 0, "train.checkpoint_every", f"must be >= 0, got {t.checkpoint_every}")
    n = cfg.intro.n_candidates
    _require(n == "all" or n >= 1, "intro.n_candidates", f"must be >= 1 or \"all\", got {n}")
    _require(cfg.intro.clip_max > 0, "intro.clip_max", f"must be > 0, got {cfg.intro.clip_max}")
    _require(cfg.intro.logits_chunk_size >= 0, "intro.logits_chunk_size", f"must be >= 0, got {cfg.intro.logits_chunk_size}")
    _require(lo.alpha > 0, "lora.alpha", f"must be > 0, got {lo.alpha}")
    _require(0 <= lo.dropout < 1, "lora.dropout", f"must be in [0, 1), got {lo.dropout}")
    _require(len(lo.target_modules) > 0, "lora.target_modules", "must name at least one module")
    from intro_lite.engine import check_lora_compat

    try:
        check_lora_compat(lo.rank, lo.target_modules)
    except ValueError as e:
        raise ConfigError(f"'lora': {e}") from None
    for key in ("prompt_template", "hint_template"):
        tmpl = getattr(cfg.data, key)
        _require("{question}" in tmpl, f"data.{key}", "must contain {question}")
    _require("{answer}" in cfg.data.hint_template, "data.hint_template", "must contain {answer}")
    for src in [cfg.data.source] if isinstance(cfg.data.source, str) else cfg.data.source:
        if not is_tiny(src) and _looks_local(src):
            _require(Path(src).exists(), "data.source", f"file not found: {src}")
    if cfg.eval.source and not is_tiny(cfg.eval.source) and _looks_local(cfg.eval.source):
        _require(Path(cfg.eval.source).exists(), "eval.source", f"file not found: {cfg.eval.source}")
    elif cfg.eval.source:
        from intro_lite.benchmarks import get_spec

        try:
            get_spec(cfg.eval.source, None)  # an unknown benchmark name fails here, before any model loads
        except ConfigError as e:
            raise ConfigError(f"'eval.source': {e}") from None
    _require(cfg.eval.samples >= 1, "eval.samples", f"must be >= 1, got {cfg.eval.samples}")
    _require(cfg.eval.limit >= 0, "eval.limit", f"must be >= 0, got {cfg.eval.limit}")
    if cfg.data.exclude_ids_from:
        _require(Path(cfg.data.exclude_ids_from).is_file(), "data.exclude_ids_from", f"file not found: {cfg.data.exclude_ids_from}")


def is_tiny(name: str) -> bool:
    """`tiny` or `tiny-<preset>`: the embedded demo's model / train split / test split."""
    return re.fullmatch(r"tiny(-[a-z0-9_]+)?", name) is not None and not Path(name).exists()


def _looks_local(source: str) -> bool:
    """A data file path (must exist) rather than an HF dataset name."""
    return source.endswith((".jsonl", ".json", ".parquet")) or Path(source).exists()


# ---------------------------------------------------------------------------------------------
# Writing the resolved config


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def toml_literal(v: Any) -> str:
    """A TOML value literal for str/int/float/bool/lists (also the right-hand side of `--set`)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_literal(x) for x in v) + "]"
    raise TypeError(type(v))


def to_toml(cfg: Config) -> str:
    """Render the resolved config as TOML (flat tables; values are str/int/float/bool/lists)."""
    lit = toml_literal
    d = to_dict(cfg)
    top = [f"{k} = {lit(v)}" for k, v in d.items() if not isinstance(v, dict)]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {lit(vv)}" for kk, vv in v.items()) for k, v in d.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"
