"""Training objectives, looked up by name: one module each, registered on import.

``base`` holds the protocol (``Objective`` and its hooks, ``Needs``, ``ObjectiveInputs``,
``BatchInfo``, ``Row``) and the registry; ``common`` the shared tensor helpers. Loop protocol
(docs/objectives.md, "Loop contract")::

    objective = get_objective(cfg.objective); ocfg = cfg.objective_config()   # its typed settings
    needs = objective.needs_for(ocfg)
    rows = objective.make_rows(step, ocfg)   # rollouts (correct only if needs.kept_only) or its own
    batch = BatchInfo(lengths, rewards, group_ids) of ALL rows trained this step (if needs.batch_totals)
    for each micro-batch (whole prompt groups if needs.whole_groups):
        policy_logits    <- forward(x ⊕ suffix) with gradient (suffix: z, z* or z ⊕ y)
        posterior_logits <- forward(x ⊕ y ⊕ z) under no_grad          if needs.posterior
        reference_*      <- forward(x ⊕ z), adapter disabled, no_grad  if needs.reference
        (needs.hidden_states: last hidden states + the LM head weight instead of logits)
        inputs.extra     <- objective.extra_passes(inputs, chunk, ctx, ocfg)  (IAPO's probe, RePro's scores)
        inputs.row_seeds <- seed + each row's index in the step (InTRO's draws; else `generator`)
        loss, stats = objective.compute(inputs, ocfg, generator=gen)
        (loss if needs.batch_totals else loss * rows / n_rows).backward()
"""

import importlib
import pkgutil

from intro_lite.objectives.base import (BatchInfo, Needs, Objective, ObjectiveInputs, PassContext, Row, StepRollouts,
                                        available, get_objective, register, registered, rollout_rows, token_capture)

# Every other module of this package is an objective and registers itself on import: adding one is
# adding its file (InTRO first, so its table leads the run config).
_MODULES = sorted((m.name for m in pkgutil.iter_modules(__path__) if m.name not in ("base", "common")),
                  key=lambda name: (name != "intro", name))
for _name in _MODULES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["BatchInfo", "Needs", "Objective", "ObjectiveInputs", "PassContext", "Row", "StepRollouts", "available",
           "get_objective", "register", "registered", "rollout_rows", "token_capture"]
