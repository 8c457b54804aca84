"""Training objectives, looked up by name: one module each, registered on import.

``base`` holds the protocol (``Needs``, ``ObjectiveInputs``, ``BatchInfo``, ``Row``, the hooks) and
the registry; ``common`` the shared tensor helpers. Loop protocol (docs/objectives.md, "Loop contract")::

    objective = get_objective(cfg.objective); kwargs = config_kwargs(<its config section>)
    needs = needs_of(objective, **kwargs)
    rows = make_rows(objective, step, **kwargs)   # rollouts (correct only if needs.kept_only) or its own
    batch = BatchInfo(lengths, rewards, group_ids) of ALL rows trained this step (if needs.batch_totals)
    for each micro-batch (whole prompt groups if needs.whole_groups):
        policy_logits    <- forward(x ⊕ suffix) with gradient (suffix: z, z* or z ⊕ y)
        posterior_logits <- forward(x ⊕ y ⊕ z) under no_grad          if needs.posterior
        reference_*      <- forward(x ⊕ z), adapter disabled, no_grad  if needs.reference
        (needs.hidden_states: last hidden states + the LM head weight instead of logits)
        objective.extra_passes(inputs, chunk, ctx, **kwargs)          if it has that hook (IAPO, RePro)
        inputs.row_seeds <- seed + each row's index in the step (InTRO's draws; else `generator`)
        loss, stats = objective.compute(inputs, **kwargs, generator=gen)
        (loss if needs.batch_totals else loss * rows / n_rows).backward()
"""

import importlib
import pkgutil

from intro_lite.objectives.base import (BatchInfo, Needs, Objective, ObjectiveInputs, PassContext, Row, StepRollouts,
                                        available, config_kwargs, get_objective, make_rows, needs_of, register,
                                        registered, rollout_rows, settings, token_capture)

# Every other module of this package is an objective and registers itself on import: adding one is
# adding its file (InTRO first, so its table leads the run config).
_MODULES = sorted((m.name for m in pkgutil.iter_modules(__path__) if m.name not in ("base", "common")),
                  key=lambda name: (name != "intro", name))
for _name in _MODULES:
    importlib.import_module(f"{__name__}.{_name}")

from intro_lite.objectives.intro import IntroConfig  # noqa: E402
from intro_lite.objectives.grpo import DrGrpoConfig, GrpoConfig  # noqa: E402
from intro_lite.objectives.raft import RaftPPConfig, ReinforceRejConfig  # noqa: E402
from intro_lite.objectives.latro import LatroConfig  # noqa: E402
from intro_lite.objectives.iapo import IapoConfig  # noqa: E402
from intro_lite.objectives.repro import ReproConfig  # noqa: E402

__all__ = [
    "BatchInfo", "Needs", "Objective", "ObjectiveInputs", "PassContext", "Row", "StepRollouts", "available",
    "config_kwargs", "get_objective", "make_rows", "needs_of", "register", "registered", "rollout_rows", "settings",
    "token_capture",
    "IntroConfig", "GrpoConfig", "DrGrpoConfig", "RaftPPConfig", "ReinforceRejConfig", "LatroConfig", "IapoConfig",
    "ReproConfig",
]
