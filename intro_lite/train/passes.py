"""The forward passes an objective declares (``Needs``) for one micro-batch, as ``ObjectiveInputs``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from intro_lite.objectives import Needs, Objective, ObjectiveInputs, PassContext, Row
from intro_lite.forward import lm_head_weight, suffix_hidden, suffix_logits
from intro_lite.train.teacher import LaggedTeacher


@dataclass
class PassSetup:
    """What the passes read besides the micro-batch; fixed for a run."""

    model: object  # the peft policy
    objective: Objective
    config: object  # the objective's settings (its config dataclass, or None)
    needs: Needs
    pad_id: int
    tokenizer: object
    problems: list  # every training problem (.answer), for the objectives' own passes
    max_completion_length: int  # rollout.max_new_tokens
    teacher: LaggedTeacher | None = None  # the answer-conditioned pass's own adapter weights (train/teacher.py)


def forward_passes(setup: PassSetup, chunk: list[Row]) -> ObjectiveInputs:
    """Policy x ⊕ suffix (with gradient), then without gradient the answer-conditioned x ⊕ y ⊕ suffix,
    the reference (adapter off) and the objective's own ``extra_passes`` (IAPO's probe, RePro's scores)."""
    model, needs, pad = setup.model, setup.needs, setup.pad_id
    x, xy, suffixes = [r.x for r in chunk], [r.xy for r in chunk], [r.suffix for r in chunk]
    # A lagged teacher's weights are swapped into the parameters, so its pass runs first, before the
    # policy pass saves those parameters for backward.
    posterior = posterior_pass(setup, xy, suffixes) if setup.teacher is not None else None
    # needs.hidden_states: last hidden states + the LM head weight; the objective makes the logits in chunks.
    policy_hidden = policy_logits = None
    if needs.hidden_states:
        policy_hidden, tokens, full_mask = suffix_hidden(model, x, suffixes, pad)
    else:
        policy_logits, tokens, full_mask = suffix_logits(model, x, suffixes, pad)
    device = tokens.device
    n_loss = torch.tensor([r.n_loss for r in chunk], device=device)
    pos = torch.arange(tokens.shape[1], device=device)
    mask = (pos[None, :] < n_loss[:, None]).float() * full_mask
    inputs = ObjectiveInputs(tokens=tokens, mask=mask, policy_logits=policy_logits,
                             rewards=torch.tensor([r.reward for r in chunk], device=device),
                             group_ids=torch.tensor([r.group for r in chunk], device=device),
                             max_completion_length=setup.max_completion_length)
    if needs.hidden_states:
        inputs.policy_hidden, inputs.lm_head_weight = policy_hidden, lm_head_weight(model)
    if needs.answer_suffix:
        inputs.answer_mask = full_mask - mask
    if posterior is None:
        posterior = posterior_pass(setup, xy, suffixes)
    if needs.hidden_states:
        inputs.posterior_hidden = posterior
    else:
        inputs.posterior_logits = posterior
    with torch.no_grad():
        if needs.reference:
            with model.disable_adapter():
                ref, _, _ = suffix_logits(model, x, suffixes, pad)
            inputs.reference_logprobs = torch.log_softmax(ref, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            del ref
        ctx = PassContext(setup.tokenizer, setup.problems, lambda p, s: suffix_logits(model, p, s, pad))
        inputs.extra = setup.objective.extra_passes(inputs, chunk, ctx, setup.config)
    return inputs


@torch.no_grad()
def posterior_pass(setup: PassSetup, xy: list[list[int]], suffixes: list[list[int]]):
    """The answer-conditioned pass x ⊕ y ⊕ suffix (hidden states or logits), by the teacher the objective
    asked for: the policy, the base (adapter disabled) or a lagged copy of the adapter. None if not needed."""
    model, needs = setup.model, setup.needs
    if not needs.posterior:
        return None
    if needs.frozen_posterior:
        teacher = model.disable_adapter()
    elif setup.teacher is not None:
        teacher = setup.teacher.swapped_in()
    else:
        teacher = contextlib.nullcontext()
    with teacher:
        pass_fn = suffix_hidden if needs.hidden_states else suffix_logits
        return pass_fn(model, xy, suffixes, setup.pad_id)[0]
