"""The configuration's shape: one dataclass per table, each key with its default written once here.

`intro_lite.toml` at the repository's top level is the commented list of the same keys; a test keeps
it equal to these defaults, so a non-editable install without the file behaves the same.

The objectives' tables come from their own modules (which import torch), so the whole `Config`
class is made on first use (`config_class`), never at import: the CLI starts without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Literal

from intro_lite.bounds import bounded


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
    rank: int = bounded(16, ge=1)
    alpha: float = bounded(32.0, gt=0)
    dropout: float = bounded(0.0, ge=0, lt=1)
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
    max_prompt_tokens: int = bounded(256, ge=1)  # longer prompts are dropped
    chat_template: bool = False  # x and x ⊕ y as the user turn of the tokenizer's chat template (instruct models)


@dataclass
class RolloutConfig:
    group_size: int = bounded(4, ge=1)  # G rationales per prompt
    temperature: float = bounded(1.0, gt=0, le=2)  # vLLM's range
    top_p: float = bounded(1.0, gt=0, le=1)
    max_new_tokens: int = bounded(256, ge=1)
    max_model_len: int = bounded(0, ge=0)  # vLLM's context; 0 = the model's own (max_position_embeddings)
    gpu_memory_utilization: float = bounded(0.3, gt=0, le=1)
    quantization: Literal["none", "bitsandbytes"] = "none"  # vLLM's base weights (GPU only)
    enforce_eager: bool = True


@dataclass
class TrainConfig:
    steps: int = bounded(100, ge=1)
    prompts_per_step: int = bounded(128, ge=1)  # the paper's batch size
    micro_batch_size: int = bounded(4, ge=1)  # rationales per forward/backward
    lr: float = bounded(1e-5, gt=0, lt=1)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = bounded(0, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    adam_beta1: float = bounded(0.9, ge=0, lt=1)  # torch.optim.AdamW's range
    adam_beta2: float = bounded(0.999, ge=0, lt=1)
    max_grad_norm: float = bounded(1.0, gt=0)
    checkpoint_every: int = bounded(50, ge=0)  # steps; 0 = only final/
    max_nonfinite_steps: int = bounded(3, ge=0)  # non-finite loss/grad steps are skipped; more than this in a row aborts
    keep_checkpoints: int = bounded(2, ge=1)
    max_rollout_tokens: int = bounded(0, ge=0)  # budget: stop once this many rationale tokens were generated; 0 = run all steps


@dataclass
class EvalConfig:
    """Held-out scoring before and after training (and the defaults of `intro-lite eval`)."""

    source: str = ""  # a benchmark name (as in `intro-lite eval`), a file, or "tiny"; "" = no eval during training
    limit: int = bounded(0, ge=0)  # 0 = all problems
    samples: int = bounded(1, ge=1)  # k samples per problem (avg@k)
    temperature: float = bounded(0.6, ge=0, le=2)  # the paper's evaluation sampling
    top_p: float = bounded(0.95, gt=0, le=1)
    max_new_tokens: int = bounded(1024, ge=1)
    seed: int = bounded(0, ge=0)
    every: int = bounded(0, ge=0)  # also score every N steps (accuracy-vs-step curves); 0 = before and after only


@dataclass
class LogConfig:
    """Where the per-step record goes besides metrics.jsonl, and what else a run writes (docs/ecosystem.md)."""

    tensorboard: bool = False  # <run>/tensorboard/: every numeric metrics.jsonl field as a scalar
    wandb: bool = False  # needs `pip install wandb`; never required
    trackio: bool = False  # needs `pip install trackio`; never required
    samples_every: int = bounded(10, ge=0)  # steps; prompts, completions, grades, per-token w into samples.jsonl; 0 = never
    plots: bool = True  # draw <run>/plots/*.png at the end of the run


@dataclass
class AlarmsConfig:
    """A yellow line under the progress bar, counted in metrics.jsonl (`alarms`) and the final summary."""

    enabled: bool = True
    truncated_fraction: float = bounded(0.5, ge=0.0, le=1.0)  # share of rollouts cut at rollout.max_new_tokens
    no_correct_steps: int = bounded(3, ge=1)  # steps in a row in which no prompt had a correct rationale
    grader_failures: float = bounded(0.1, ge=0.0, le=1.0)  # share of rollouts whose grading timed out or raised
    w_std_min: float = bounded(1e-3, ge=0)  # InTRO: std of w below this (with w_mean ≈ 1) = q ≈ p, no signal
    w_clipped_fraction: float = bounded(0.5, ge=0.0, le=1.0)  # InTRO: share of w clipped at intro.clip_max
    entropy_min: float = bounded(0.01, ge=0)  # policy entropy (nats/token) below this = collapse (the tiny task runs at 0.03-0.12)
    accuracy_window: int = bounded(5, ge=1)  # steps in the rolling mean of rollout accuracy
    accuracy_drop: float = bounded(0.5, ge=0.0, le=1.0)  # rolling mean below this share of its best so far = getting worse
    # InTRO's teacher monitor (intro.monitor_every): its hinted accuracy below this share of its start, or its
    # per-token KL to the start model above teacher_kl nats = the teacher is running away. 0.01 from the replays
    # (docs/results/intro-regime): it fired on the 3 of 5 replayed runs that ended 29-46 points behind, on neither other
    teacher_drift: float = bounded(0.5, ge=0.0, le=1.0)
    teacher_kl: float = bounded(0.01, gt=0.0)
    # logprob_gap_mean (mean |log π_vllm − log π_trainer| over the rollout tokens trained) above the run's limit =
    # vLLM served another adapter. The limit adds those that apply. Healthy CPU runs of the tiny models measured a
    # step mean of at most 4.5e-7 in float32 (an adapter one step stale: 4.2e-3), 1.1e-3 in bfloat16, 0.021 with the
    # trainer's base in NF4 (docs/reliability.md, "The logprob gap"); GPU kernels and larger models are unmeasured.
    logprob_gap_float32: float = bounded(1e-4, gt=0)  # 200x the float32 mean, 40x below a one-step-stale adapter
    logprob_gap_16bit: float = bounded(0.05, gt=0)  # added for bfloat16/float16: 45x the CPU mean, room for GPU kernels
    logprob_gap_nf4: float = bounded(0.1, gt=0)  # added for a 4-bit base (trainer NF4, vLLM bnb): 5x the worst step


@dataclass
class CoreConfig:
    """The run's own keys and tables; `Config` adds one table per objective that has keys."""

    name: str = "run"
    seed: int = bounded(0, ge=0, lt=2**32)  # numpy seeds are 32-bit
    objective: str = "intro"
    # math (math-verify) | exact | choice | "pkg.module:fn" | "path/to/file.py:fn" (intro_lite/rewards.py)
    reward: str = "math"
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def objective_config(self):
        """The chosen objective's own table, its typed settings (None if it has no keys)."""
        from intro_lite.objectives import get_objective

        return getattr(self, get_objective(self.objective).section, None)


_CLASSES: dict[tuple, type] = {}


def config_class(objective: str = "") -> type:
    """The whole run configuration's class: CoreConfig's tables, then one table per registered
    objective with keys (`cfg.intro`, `cfg.grpo`, ...), typed by the objective's own dataclass. A user
    objective (`objective = "file.py:Name"`) is imported and registered first, so its table is known."""
    from intro_lite.objectives import get_objective, registered

    if objective:
        get_objective(objective)
    tables: dict[str, type] = {}
    for o in registered():
        if o.config is not None:
            tables.setdefault(o.section, o.config)
    key = tuple(tables.items())
    if key not in _CLASSES:
        cls = make_dataclass("Config", [(name, tp, field(default_factory=tp)) for name, tp in tables.items()],
                             bases=(CoreConfig,))
        cls.__module__ = __name__
        cls.__doc__ = "The whole run configuration: CoreConfig's tables, then each objective's own table."
        _CLASSES[key] = cls
    return _CLASSES[key]


def __getattr__(name: str):
    # `Config`, the class with the built-in objectives' tables, made when first asked for (imports torch).
    if name == "Config":
        return config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
