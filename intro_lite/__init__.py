"""intro-lite: a lightweight single-node LoRA trainer for InTRO."""

import os

# OpenMP threads sleep at barriers instead of spinning. libgomp reads this when torch loads, and
# loading the config already loads torch (the objectives own their config tables), so it is set
# here, before any intro_lite module imports torch (a user's own setting wins). With another busy
# process on the 2 cores here, spinning threads stalled each other: policy forward + backward
# 30 s vs 6.4 s (docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
