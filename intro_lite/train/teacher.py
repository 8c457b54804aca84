"""A teacher that lags the policy: its own copy of the LoRA weights, swapped in for the
answer-conditioned pass (`needs.teacher_decay` / `needs.teacher_refresh`; InTRO's `teacher = "ema"` /
`"lagged"`). No second base model: the cost is one more copy of the adapter.

Why (docs/objectives.md, "Choosing InTRO's settings"): when the policy itself reads the hint, its update
moves the teacher too, and on the tiny task the two ran away together. A teacher that trails the policy
(an exponential moving average, or a snapshot refreshed every N steps) keeps a target that moves slower
than the policy; `base` (the adapter disabled) is the limit of a teacher that never moves.
"""

from __future__ import annotations

import contextlib

import torch


class LaggedTeacher:
    """The teacher's LoRA weights, one tensor per trainable parameter of the policy (same order).

    ``decay`` d: after every optimizer step t ← d·t + (1 − d)·θ (d = 0: the policy, exactly; d = 1: the
    start adapter, exactly). ``refresh`` N (with decay None): after step s, t ← θ when N divides s
    (N = 1: the policy, exactly). Both start as a copy of the policy's weights at step 0."""

    def __init__(self, params: list[torch.Tensor], *, decay: float | None = None, refresh: int = 0):
        if (decay is None) == (refresh == 0):
            raise ValueError("a lagged teacher needs either an EMA decay or a refresh period")
        self.params, self.decay, self.refresh = params, decay, refresh
        self.weights = [p.detach().clone() for p in params]

    @contextlib.contextmanager
    def swapped_in(self):
        """The policy's parameters hold the teacher's weights inside the block (under no_grad, before
        any pass with gradient: the parameters' tensors are exchanged, not copied, so nothing is saved
        for backward and no version counter moves)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for i, p in enumerate(self.params):
            p.data, self.weights[i] = self.weights[i], p.data

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After the optimizer step of `step` (1-based; a skipped non-finite step counts the same)."""
        if self.decay is not None:
            for t, p in zip(self.weights, self.params):
                t.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)
        elif step % self.refresh == 0:
            for t, p in zip(self.weights, self.params):
                t.copy_(p.detach())

    def state_dict(self) -> list[torch.Tensor]:
        return [t.detach().cpu().clone() for t in self.weights]

    def load_state_dict(self, weights: list[torch.Tensor]) -> None:
        if len(weights) != len(self.weights) or any(a.shape != b.shape for a, b in zip(weights, self.weights)):
            raise ValueError("the checkpoint's teacher weights do not match this adapter")
        with torch.no_grad():
            for t, w in zip(self.weights, weights):
                t.copy_(w)


def make_teacher(needs, params: list[torch.Tensor]) -> LaggedTeacher | None:
    """The lagged teacher `needs` asks for, or None (the posterior pass uses the policy, or the base)."""
    if needs.teacher_decay is None and not needs.teacher_refresh:
        return None
    return LaggedTeacher(params, decay=needs.teacher_decay, refresh=needs.teacher_refresh)
