"""intro_lite/alloc.py: freed logits-sized blocks are reused, not page-faulted in again."""

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, torch
from intro_lite.alloc import keep_freed_memory
changed = keep_freed_memory()
def step():  # a micro-batch's large buffers (logits, their gradient, a small tensor between), written and freed
    x = torch.empty(64 * 2**20); x.fill_(1.0)
    y = torch.empty(16 * 2**20); y.fill_(1.0)
    small = torch.empty(1000)
    del x
    z = torch.empty(70 * 2**20); z.fill_(1.0)
    del y, z
for _ in range(6):  # the heap settles in a few steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(changed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    changed, faults = out.stdout.split()
    return changed, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_block_is_reused_without_page_faults():
    changed, faults = probe(INTRO_LITE_MALLOC="")
    default_changed, default_faults = probe(INTRO_LITE_MALLOC="default")  # the opt-out: glibc as it comes
    assert (changed, default_changed) == ("True", "False")
    assert default_faults > 100_000  # ~600 MB a step in 4 kB pages faulted in again (614,000 measured)
    assert faults < 1_000, faults
