"""`intro-lite sweep`: a grid of runs (methods × seeds × any key) from one shared start, then a report.

A sweep file names a base recipe, overrides for every run, a grid, an optional shared warm-up run
(`[start]`, run once; every cell starts from its adapter), a budget per cell and the held-out eval:

    recipe = "../tiny.toml"            # relative to the sweep file
    name = "toy-table1"                # runs land in <output_dir>/<name>/
    [set]                              # every run, start included
    "train.lr" = 3e-4
    [grid]                             # the product of these; `seed` gives the error bars
    objective = ["sft", "grpo", "intro"]
    seed = [0, 1, 2]
    [start]                            # optional: keys of the start run (an SFT warm-up by default)
    objective = "sft"
    "train.steps" = 20
    [budget]                           # one of: steps, rollout_tokens
    steps = 40
    [eval]                             # the same held-out eval for every cell
    source = "tiny"
    limit = 200
    every = 10

Cells run one after another in this process and share one vLLM engine. A finished cell (DONE
marker) is never re-run; an interrupted one resumes from its last checkpoint; a failing one is
recorded (FAILED, with its traceback) and the sweep goes on.

`spec` reads and checks the sweep file, `run` runs it, `results` writes the report.
"""

from intro_lite.sweep.results import report
from intro_lite.sweep.run import run_sweep
from intro_lite.sweep.spec import Cell, Sweep, cell_config, cells, load_sweep, open_sweep_dir, start_config

__all__ = ["Cell", "Sweep", "cell_config", "cells", "load_sweep", "open_sweep_dir", "start_config", "run_sweep", "report"]
