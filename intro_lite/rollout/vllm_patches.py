"""Work-arounds for process-global side effects of an in-process vLLM (why: docs/engine.md).

vLLM's CPU worker reseeds the global RNGs and replaces `torch.set_num_threads` with a no-op, and
`EngineCore.shutdown()` destroys the parallel groups every other live engine still needs.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path


def _torch_set_num_threads():
    import torch

    # vLLM's CPUWorker may have replaced torch.set_num_threads; torch._C has the real one.
    return getattr(torch._C, "set_num_threads", torch.set_num_threads)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (None = leave as is)."""
    import torch

    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    setter = _torch_set_num_threads()
    setter(n)
    try:
        yield
    finally:
        setter(prev)


@contextlib.contextmanager
def keep_parallel_groups():
    """EngineCore.shutdown() without its cleanup_dist_env_and_memory() (destroys the global groups)."""
    from vllm.v1.engine import core

    cleanup = core.cleanup_dist_env_and_memory
    core.cleanup_dist_env_and_memory = lambda *a, **kw: None
    try:
        yield
    finally:
        core.cleanup_dist_env_and_memory = cleanup


@contextlib.contextmanager
def preserve_global_state():
    """Undo vLLM start-up side effects: global RNG reseeding, torch.set_num_threads patch."""
    import torch

    set_threads = torch.set_num_threads
    py_state = random.getstate()
    torch_state = torch.get_rng_state()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except Exception:  # pragma: no cover
        np = None
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        random.setstate(py_state)
        torch.set_rng_state(torch_state)
        if np is not None:
            np.random.set_state(np_state)


@contextlib.contextmanager
def private_rendezvous_file():
    """vLLM's one-process rendezvous is a torch FileStore at $TMPDIR/vllm_dist_<uuid>, removed only by a clean
    shutdown, so every killed run left one in /tmp. Build the engine with a private temp dir, then remove the
    file once the engine is up: only vLLM's start-up uses the store, and torch's FileStore destructor returns
    early when its file is gone."""
    import shutil
    import tempfile

    private = tempfile.mkdtemp(prefix="intro-lite-vllm-")
    saved, tempfile.tempdir = tempfile.tempdir, private
    try:
        yield
    finally:
        tempfile.tempdir = saved
        for leftover in Path(private).glob("vllm_dist_*"):
            leftover.unlink(missing_ok=True)
        if not any(Path(private).iterdir()):
            shutil.rmtree(private, ignore_errors=True)
