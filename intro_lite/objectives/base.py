"""What an objective is and how the loop talks to it; the registry.

An objective is a subclass of :class:`Objective` registered with ``@register("name")``. Its
``config`` dataclass is its table in the run config (``section``, default the name) with every
default written there once; the loop builds it from the TOML, checks it once, and hands the typed
object to each hook. The hooks, with defaults here:

* ``needs_for(cfg) -> Needs``: which forward passes the loop runs (default: the class's ``needs``);
* ``make_rows(step, cfg) -> list[Row]``: the rows to train this step (default :func:`rollout_rows`:
  one per rollout, correct ones only if ``needs.kept_only``);
* ``extra_passes(inputs, chunk, ctx, cfg) -> dict``: further no-grad passes only it needs (IAPO's
  answer probe, RePro's prefix scores), run after the policy/posterior/reference passes of a
  micro-batch; what it returns becomes ``inputs.extra``;
* ``compute(inputs, cfg, *, generator) -> (loss, stats)``: the loss, a pure function of tensors.
  ``stats`` holds python floats for logging (keys starting ``n_`` are counts the loop adds up over
  micro-batches, the rest are means the loop weights by rows).

All logits are ``[B, T, V]`` and sliced so that position t predicts ``tokens[:, t]`` (the
rationale ids from the rollout); ``mask`` ``[B, T]`` is 1 on the tokens that count.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from torch import Tensor


@dataclass(frozen=True)
class Needs:
    """Which passes and inputs an objective consumes (the policy pass x ⊕ z, with gradient, always runs)."""

    posterior: bool = False  # x ⊕ y ⊕ z (answer-conditioned), no gradient
    # The answer-conditioned pass with the adapter disabled: a frozen teacher (the start model), not the policy.
    frozen_posterior: bool = False
    # The answer-conditioned pass with a lagging copy of the adapter (train/teacher.py), kept by the loop:
    # an exponential moving average with this decay, or a snapshot refreshed every this many steps.
    teacher_decay: float | None = None
    teacher_refresh: int = 0
    # Every this many steps the loop measures the answer-conditioned teacher's drift (train/monitor.py); 0 = never.
    teacher_monitor_every: int = 0
    teacher_monitor_prompts: int = 32
    # x ⊕ z with the adapter disabled, no gradient: ``reference_logprobs`` (the k3 KL to the start model)
    reference: bool = False
    kept_only: bool = False  # only rationales whose answer was graded correct
    # The rationale is the dataset's golden solution z*, not a rollout (SFT): the loop rolls nothing out.
    gold_solution: bool = False
    # The policy pass is over x ⊕ z ⊕ y: ``tokens`` hold z ⊕ y, ``mask`` marks z, ``answer_mask`` marks y (LaTRO).
    answer_suffix: bool = False
    # A micro-batch must hold every row of each group it touches (advantages depend on forward outputs).
    whole_groups: bool = False
    # ``batch`` (whole-batch BatchInfo) is read: compute returns the micro-batch's share of the
    # full-batch loss, and the loop sums micro-batch losses unscaled. When False (intro), compute
    # returns a mean over its rows and the loop scales each micro-batch loss by rows / n_rows.
    batch_totals: bool = False
    # ``policy_hidden``/``posterior_hidden`` (last hidden states at the suffix positions) and
    # ``lm_head_weight`` instead of full logits (InTRO's chunked loss); ``policy_logits`` is then None.
    hidden_states: bool = False


@dataclass(frozen=True)
class BatchInfo:
    """Facts about every row trained in one optimizer step, for normalising across micro-batches.

    Row order is irrelevant: group statistics are looked up by group id, totals are sums.
    Rows are those the loop feeds to ``compute`` this step (after ``kept_only`` filtering).
    """

    lengths: Tensor  # [N] number of loss tokens of each row (its ``mask`` sum; z tokens for LaTRO)
    rewards: Tensor | None = None  # [N] graded reward of each row (1/0 for math), float
    group_ids: Tensor | None = None  # [N] long, the prompt each row was sampled for


@dataclass
class ObjectiveInputs:
    tokens: Tensor  # [B, T] token ids
    mask: Tensor  # [B, T] 1 = token counts in the loss
    policy_logits: Tensor | None  # [B, T, V]; None when the loop passes hidden states (needs.hidden_states)
    posterior_logits: Tensor | None = None  # [B, T, V]
    # log π_ref(tokens[b, t] | ...) of the adapter-disabled pass over the same positions, [B, T].
    reference_logprobs: Tensor | None = None  # [B, T]
    rewards: Tensor | None = None  # [B] graded reward (1 correct / 0 wrong)
    group_ids: Tensor | None = None  # [B] long, rows with equal ids are rollouts of one prompt
    # π_old(tokens[b, t]) for several updates per rollout batch. The loop does one update per batch
    # and leaves it None: π_old = sg(π_θ), ratio 1 in value, gradient kept (docs/objectives.md).
    sampled_logprobs: Tensor | None = None  # [B, T]
    answer_mask: Tensor | None = None  # [B, T] 1 on the gold-answer tokens y (answer_suffix)
    max_completion_length: int | None = None  # rollout max_new_tokens, for `dr_grpo` aggregation
    # What the objective's own ``extra_passes`` returned for this micro-batch (IAPO's probe entropies,
    # RePro's prefix scores); named and described by that objective.
    extra: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    batch: BatchInfo | None = None  # whole-step totals; None = this micro-batch is the whole batch
    # needs.hidden_states: logits = hidden @ lm_head_weight.T, made by the objective chunk by chunk.
    policy_hidden: Tensor | None = None  # [B, T, H], with gradient
    posterior_hidden: Tensor | None = None  # [B, T, H], no gradient
    lm_head_weight: Tensor | None = None  # [V, H]
    # A seed per row for the objective's own random draws (InTRO's candidates): the loop gives row i of
    # the step seed + i, so the draws do not depend on which micro-batch or rank holds the row.
    row_seeds: Tensor | None = None  # [B] long; None = draw from compute's `generator`


@dataclass
class Row:
    """One training sequence: prefix x (and x⊕y) ids, suffix ids, and what the objective reads."""

    prompt: int  # problem index
    group: int  # rows of one prompt in this step share it
    x: list[int]  # question prompt ids
    xy: list[int]  # question + answer-hint prompt ids
    suffix: list[int]  # rationale ids from the rollout (or z* for SFT, z_cut ⊕ y for LaTRO)
    n_loss: int  # leading suffix tokens in the loss mask (the rest, if any, are LaTRO's y)
    reward: float
    # vLLM's raw logprob of each leading suffix token it sampled (a rollout's, or the kept part of a cut
    # one); None = not sampled here (SFT's gold solutions). The loop logs its gap to the trainer's.
    served_logprobs: list[float] | None = None


@dataclass
class StepRollouts:
    """One step's prompts and (unless the objective needs none) their graded rollouts, for ``make_rows``."""

    idx: list[int]  # problem index of each prompt, in sampling order
    x_ids: list[list[int]]  # question ids of every problem
    xy_ids: list[list[int]]  # question + hint ids of every problem
    tokenizer: Any
    problems: list  # every problem (.answer, .solution)
    group_size: int
    rollouts: list | None = None  # [(problem index, sample with .token_ids)], G per prompt in order
    correct: list[bool] | None = None  # graded, one per rollout
    rewards: list[float] | None = None  # the reward of each rollout (None: 1/0 from `correct`)
    # Position of idx[0] in the step's whole batch (a data-parallel rank holds a slice of it): a row's
    # group is its prompt's position in the whole batch, unique across ranks.
    first_group: int = 0


@dataclass
class PassContext:
    """What ``extra_passes`` may use: text helpers and a no-grad scorer on the current policy."""

    tokenizer: Any
    problems: list
    # logits(prefixes, suffixes) -> (logits [B, T, V] predicting each suffix token, suffix ids, mask), as
    # suffix.suffix_logits with the adapter on; the caller holds no_grad.
    logits: Callable[[list[list[int]], list[list[int]]], tuple[Tensor, Tensor, Tensor]]


def rollout_rows(step: StepRollouts, *, kept_only: bool) -> list[Row]:
    """One row per rollout (its own token ids, EOS included), the correct ones only if ``kept_only``;
    a row's reward is the graded reward (1/0 for math, the reward function's value otherwise) and its
    served_logprobs the ones vLLM returned with the sample (None if it returned none)."""
    G = step.group_size
    rewards = step.rewards if step.rewards is not None else [float(c) for c in step.correct]
    return [Row(i, step.first_group + j // G, step.x_ids[i], step.xy_ids[i], list(s.token_ids), len(s.token_ids), float(r),
                list(getattr(s, "logprobs", None) or []) or None)
            for j, ((i, s), c, r) in enumerate(zip(step.rollouts, step.correct, rewards)) if c or not kept_only]


class Objective:
    """Base class of the objectives: set the class attributes, implement ``compute``, override a hook
    where the default does not fit. One instance per objective is registered (``register``)."""

    name: ClassVar[str] = ""  # set by `register`
    section: ClassVar[str] = ""  # its table in the run config (set by `register`, default the name)
    config: ClassVar[type | None] = None  # its settings dataclass (frozen): the defaults, written once
    needs: ClassVar[Needs] = Needs()  # with the default config; see needs_for
    stat_keys: ClassVar[tuple[str, ...]] = ()  # the keys of `compute`'s stats, logged as null when nothing trained

    def default_config(self):
        """Its settings with every default (None for an objective without keys)."""
        return None if self.config is None else self.config()

    def needs_for(self, cfg) -> Needs:
        """The passes it needs under ``cfg`` (its config dataclass instance, or None)."""
        return self.needs

    def make_rows(self, step: "StepRollouts", cfg) -> list[Row]:
        """The rows to train this step: one per rollout, the correct ones only if it keeps only those."""
        return rollout_rows(step, kept_only=self.needs_for(cfg).kept_only)

    def extra_passes(self, inputs: ObjectiveInputs, chunk: list[Row], ctx: "PassContext", cfg) -> dict[str, Tensor]:
        """Further no-grad passes over the micro-batch ``chunk`` (``inputs`` holds the other passes'
        outputs); the loop stores the result in ``inputs.extra``."""
        return {}

    def compute(self, inputs: ObjectiveInputs, cfg=None, *, generator=None) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError(f"objective {self.name!r} has no compute()")


_token_sink: list | None = None


@contextlib.contextmanager
def token_capture(enabled: bool = True):
    """While active, objectives record per-token values of the rows they train (``capture_tokens``):
    yields a list with one {name: [values of each row]} per ``compute`` call, in row order. The loop
    turns it on for sample steps only (samples.jsonl); off, it costs nothing."""
    global _token_sink
    _token_sink = [] if enabled else None
    try:
        yield _token_sink
    finally:
        _token_sink = None


def capturing() -> bool:
    return _token_sink is not None


def capture_tokens(lengths: Tensor, **values: Tensor) -> None:
    """Record flat per-token values (the mask tokens, row-major) split into rows of ``lengths``."""
    if _token_sink is None:
        return
    sizes = [int(n) for n in lengths.tolist()]
    _token_sink.append({k: [x.tolist() for x in v.detach().float().cpu().split(sizes)] for k, v in values.items()})


_REGISTRY: dict[str, Objective] = {}


def register(name: str, *, section: str | None = None) -> Callable[[type], type]:
    """Class decorator: registers one instance of the class under ``name``; ``section`` is its config
    table when the name is not a TOML bare key (``raft++`` -> ``raft_pp``)."""

    def decorate(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is already registered")
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError(f"objective {name!r}: {cls!r} is not a subclass of intro_lite.objectives.Objective")
        cls.name, cls.section = name, section or name
        _REGISTRY[name] = cls()
        return cls

    return decorate


def is_user_objective(name: str) -> bool:
    """``"path/to/file.py:Name"`` or ``"pkg.module:Name"``: an objective from the user's own code."""
    return ":" in name


def get_objective(name: str) -> Objective:
    """The registered objective ``name``; a user spec (``file.py:Name``) is imported and registered
    under the spec on first use, with its config table named ``Name``. Errors: one-line ValueError."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if not is_user_objective(name):
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(available())}, or 'file.py:Name'")
    cls = _load_user_objective(name)
    register(name, section=cls.section or name.rpartition(":")[2])(cls)
    return _REGISTRY[name]


def _load_user_objective(spec: str) -> type:
    import importlib
    import importlib.util
    from pathlib import Path

    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise ValueError(f"objective {spec!r}: expected 'path/to/file.py:Name' or 'pkg.module:Name'")
    try:
        if target.endswith(".py"):
            if not Path(target).is_file():
                raise ValueError(f"objective {spec!r}: file not found: {target}")
            loader = importlib.util.spec_from_file_location(f"intro_lite_user_objective_{Path(target).stem}", target)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ValueError:
        raise
    except Exception as e:  # the user's code: name the file and its first error, in one line
        raise ValueError(f"objective {spec!r}: importing {target} failed: {type(e).__name__}: {e}") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ValueError(f"objective {spec!r}: {target} has no class {attr!r} subclassing intro_lite.objectives.Objective")
    return cls


def registered() -> list[Objective]:
    """Every registered objective, in registration (import) order."""
    return list(_REGISTRY.values())


def available() -> list[str]:
    """The built-in objectives' names (user objectives are named by their spec)."""
    return sorted(n for n in _REGISTRY if not is_user_objective(n))
