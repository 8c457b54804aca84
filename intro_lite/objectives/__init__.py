"""Training objectives, looked up by name.

An objective is a class registered with ``@register("name")``. It declares which
forward passes the training loop must run (``needs``, or ``needs_for(**config)`` when
that depends on its config: use :func:`needs_of`) and computes the loss from their
outputs with a pure ``compute(inputs, **config) -> (loss, stats)``; ``stats`` holds
python floats for logging (keys starting ``n_`` are counts the loop adds up over
micro-batches, the rest are means the loop weights by rows).

Loop protocol (the per-objective contract is in docs/objectives.md, "Loop contract")::

    objective = get_objective(cfg.objective); needs = needs_of(objective, **kwargs)
    if needs.kept_only: keep only rationales with reward > 0
    if needs.batch_totals: batch = BatchInfo(rewards, group_ids, lengths) of ALL rows trained this step
    for each micro-batch (whole prompt groups if needs.whole_groups):
        policy_logits    <- forward(x ⊕ z) with gradient  (x ⊕ z* if needs.gold_solution,
                                                            x ⊕ z ⊕ y if needs.answer_suffix)
        posterior_logits <- forward(x ⊕ y ⊕ z) under no_grad          if needs.posterior
        reference_*      <- forward(x ⊕ z), adapter disabled, no_grad  if needs.reference
        probe_entropy    <- answer-probe entropies, no_grad           if needs.answer_entropy_probe
        (needs.hidden_states: the policy/posterior passes yield last hidden states + the LM head
         weight instead of logits: policy_hidden, posterior_hidden, lm_head_weight)
        prefix_*         <- gold-answer scores at prefix points       if needs.prefix_scores
        loss, stats = objective.compute(ObjectiveInputs(...), **kwargs)
        (loss if needs.batch_totals else loss * rows / n_rows).backward()

All logits are ``[B, T, V]`` and sliced so that position t predicts ``tokens[:, t]``
(the rationale ids from the rollout); ``mask`` ``[B, T]`` is 1 on the tokens that count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

from torch import Tensor


@dataclass(frozen=True)
class Needs:
    """Which passes and inputs an objective consumes."""

    policy_grad: bool = True  # x ⊕ z through the adapter, with gradient
    posterior: bool = False  # x ⊕ y ⊕ z (answer-conditioned), no gradient
    reference: bool = False  # x ⊕ z with the adapter disabled, no gradient
    kept_only: bool = False  # only rationales whose answer was graded correct
    # The rationale is the dataset's golden solution z*, not a rollout (SFT): rollouts are not needed.
    gold_solution: bool = False
    # The policy pass is over x ⊕ z ⊕ y: ``tokens`` hold z ⊕ y, ``mask`` marks z, ``answer_mask`` marks y (LaTRO).
    answer_suffix: bool = False
    # All G rollouts of each prompt (none filtered), with ``rewards`` and ``group_ids``.
    groups: bool = False
    # A micro-batch must hold every row of each group it touches (advantages depend on forward outputs).
    whole_groups: bool = False
    # ``probe_entropy``: per-position answer-probe entropies (IAPO ``last_token``).
    answer_entropy_probe: bool = False
    # ``prefix_positions``/``prefix_scores``: gold-answer log-probs after rationale prefixes (RePro).
    prefix_scores: bool = False
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
    rewards: Tensor | None = None  # [N] graded reward of each row (1/0), float
    group_ids: Tensor | None = None  # [N] long, the prompt each row was sampled for


@dataclass
class ObjectiveInputs:
    tokens: Tensor  # [B, T] token ids
    mask: Tensor  # [B, T] 1 = token counts in the loss
    policy_logits: Tensor | None  # [B, T, V]; None when the loop passes hidden states (needs.hidden_states)
    posterior_logits: Tensor | None = None  # [B, T, V]
    # Adapter-disabled pass over the same positions: full logits, or (cheaper, preferred) the
    # log-prob of ``tokens`` only, log π_ref(tokens[b, t] | ...) as [B, T].
    reference_logits: Tensor | None = None  # [B, T, V]
    reference_logprobs: Tensor | None = None  # [B, T]
    rewards: Tensor | None = None  # [B] graded reward (1 correct / 0 wrong)
    group_ids: Tensor | None = None  # [B] long, rows with equal ids are rollouts of one prompt
    # π_old(tokens[b, t]) as the rollout engine sampled it. None (the default for one update per
    # rollout batch) means π_old = sg(π_θ): ratio 1 in value, gradient kept (METHODS.md).
    sampled_logprobs: Tensor | None = None  # [B, T]
    answer_mask: Tensor | None = None  # [B, T] 1 on the gold-answer tokens y (answer_suffix)
    max_completion_length: int | None = None  # rollout max_new_tokens, for `dr_grpo` aggregation
    # IAPO last_token: H_t = entropy of the next-token distribution at the first answer position
    # after x ⊕ z<t ⊕ answer marker, for each rationale position t.
    probe_entropy: Tensor | None = None  # [B, T]
    # RePro: scored prefix lengths p (ascending; first 0, last |z|; pad -1) and J̃_p, the mean
    # log-prob of the gold answer tokens (``\boxed{y}``) given x ⊕ z[:p].
    prefix_positions: Tensor | None = None  # [B, P] long
    prefix_scores: Tensor | None = None  # [B, P] float
    batch: BatchInfo | None = None  # whole-step totals; None = this micro-batch is the whole batch
    # needs.hidden_states: logits = hidden @ lm_head_weight.T, made by the objective chunk by chunk.
    policy_hidden: Tensor | None = None  # [B, T, H], with gradient
    posterior_hidden: Tensor | None = None  # [B, T, H], no gradient
    lm_head_weight: Tensor | None = None  # [V, H]


class Objective(Protocol):
    name: ClassVar[str]
    needs: ClassVar[Needs]  # with the default config; see needs_of
    stat_keys: ClassVar[tuple[str, ...]]  # the keys of `compute`'s stats, logged as null when nothing trained

    def compute(self, inputs: ObjectiveInputs, **config) -> tuple[Tensor, dict[str, float]]: ...


def needs_of(objective: Objective, **config) -> Needs:
    """The passes ``objective`` needs under ``config`` (e.g. GRPO needs the reference only if beta > 0)."""
    needs_for = getattr(objective, "needs_for", None)
    return needs_for(**config) if needs_for is not None else objective.needs


_REGISTRY: dict[str, Objective] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: registers one instance of the class under ``name``."""

    def decorate(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return decorate


def get_objective(name: str) -> Objective:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(available())}") from None


def available() -> list[str]:
    return sorted(_REGISTRY)


# Imported last so the modules can use the names above to register themselves.
from intro_lite.objectives import intro  # noqa: E402,F401
from intro_lite.objectives import baselines  # noqa: E402,F401
