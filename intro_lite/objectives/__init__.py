"""Training objectives, looked up by name.

An objective is a class registered with ``@register("name")``. It declares which
forward passes the training loop must run (``needs``) and computes the loss from
their outputs with a pure ``compute(inputs, **config) -> (loss, stats)``; ``stats``
holds python floats for logging.

Loop protocol::

    objective = get_objective(cfg.objective)
    if objective.needs.kept_only: keep only rationales with reward > 0
    policy_logits    <- forward(x ⊕ z), with gradient
    posterior_logits <- forward(x ⊕ y ⊕ z) under no_grad   if needs.posterior
    reference_logits <- forward(x ⊕ z), adapter disabled   if needs.reference
    loss, stats = objective.compute(ObjectiveInputs(...), **cfg.objective_kwargs)
    loss.backward()

All logits are ``[B, T, V]`` and sliced so that position t predicts ``tokens[:, t]``
(the rationale ids from the rollout); ``mask`` ``[B, T]`` is 1 on the tokens that count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

from torch import Tensor


@dataclass(frozen=True)
class Needs:
    """Which passes an objective consumes."""

    policy_grad: bool = True  # x ⊕ z through the adapter, with gradient
    posterior: bool = False  # x ⊕ y ⊕ z (answer-conditioned), no gradient
    reference: bool = False  # x ⊕ z with the adapter disabled, no gradient
    kept_only: bool = False  # only rationales whose answer was graded correct


@dataclass
class ObjectiveInputs:
    tokens: Tensor  # [B, T] token ids
    mask: Tensor  # [B, T] 1 = token counts in the loss
    policy_logits: Tensor  # [B, T, V]
    posterior_logits: Tensor | None = None  # [B, T, V]
    reference_logits: Tensor | None = None  # [B, T, V]
    rewards: Tensor | None = None  # [B]


class Objective(Protocol):
    name: ClassVar[str]
    needs: ClassVar[Needs]
    stat_keys: ClassVar[tuple[str, ...]]  # the keys of `compute`'s stats, logged as null when nothing trained

    def compute(self, inputs: ObjectiveInputs, **config) -> tuple[Tensor, dict[str, float]]: ...


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


# Imported last so the module can use the names above to register itself.
from intro_lite.objectives import intro  # noqa: E402,F401
