"""Data parallel over torchrun's processes: the process group and the few collectives the trainer uses.

On one process (no torchrun, or WORLD_SIZE=1) every helper is a no-op and world() == 1, so the
single-process path runs exactly as before. Under torchrun each rank holds the whole adapter and
trains on 1/N of each step's rows; the gradients are all-reduced explicitly (train/step.py), not
through a DDP wrapper (a peft model and DDP's no_sync across micro-batches do not mix well), and
every batch-wide normaliser is the global one. docs/scale.md says what is global and what per rank.

vLLM in-process: `init` runs before the engine starts. vLLM, finding torch.distributed initialised,
builds its groups on top of ours as N independent tensor-parallel-1 replicas ("ExternalDP" in
vllm/distributed/parallel_state.py), so each rank gets its own single-process engine; starting the
engines is then a collective (every rank starts its engine at the same point of the run), and an
engine's close() destroys the process group: close the engine only after the last collective.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as td

TIMEOUT_ENV = "INTRO_LITE_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks
DEFAULT_TIMEOUT_S = 600.0

_RANK, _WORLD = 0, 1


def launched() -> int:
    """The world size torchrun launched this process into (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def world() -> int:
    return _WORLD


def rank() -> int:
    return _RANK


def is_main() -> bool:
    """Rank 0, the only rank that writes the run's files (also True on one process)."""
    return _RANK == 0


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        from intro_lite.errors import ConfigError

        raise ConfigError(f"{TIMEOUT_ENV} = {raw!r}: expected a number of seconds > 0")
    return value


def pin_device() -> None:
    """Under torchrun, let each rank see only its own GPU (CUDA_VISIBLE_DEVICES), before anything asks
    CUDA: vLLM's single-process executor always takes the first visible GPU, so the trainer and the
    engine of rank r then share GPU LOCAL_RANK as "cuda:0". A no-op on one process."""
    if launched() <= 1 or "LOCAL_RANK" not in os.environ:
        return
    local, listed = int(os.environ["LOCAL_RANK"]), os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and not listed.strip():
        return  # no GPU, on purpose
    visible = [d.strip() for d in (listed or "").split(",") if d.strip()]
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[local] if local < len(visible) else str(local)


def check_split(prompts_per_step: int, n: int) -> None:
    """Each rank takes prompts_per_step / n prompts of every step: it must divide (one line if not)."""
    if prompts_per_step % n:
        from intro_lite.errors import ConfigError

        raise ConfigError(f"train.prompts_per_step = {prompts_per_step} does not split evenly over {n} processes; "
                          f"make it a multiple of {n}")


def exec_torchrun(nproc: int, prompts_per_step: int, args: list[str]) -> None:
    """`intro-lite train ... --nproc N`: replace this process with `torchrun --nproc-per-node N -m intro_lite
    <args>` (--standalone: a free local port for the rendezvous, so concurrent runs never collide)."""
    import sys

    from intro_lite.errors import ConfigError

    if launched() > 1:
        raise ConfigError("--nproc inside a torchrun launch: give one or the other")
    check_split(prompts_per_step, nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "intro_lite",
           *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)


def init(device: str = "auto") -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group, gloo on CPU and nccl on CUDA, with a
    timeout on every collective (INTRO_LITE_DIST_TIMEOUT, default 600 s) so a rank that stops answering
    ends the job instead of hanging it. A no-op on one process or when already joined."""
    global _RANK, _WORLD
    if launched() <= 1 or _WORLD > 1:
        return
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(0)  # pin_device left this rank one visible GPU
    td.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s()))
    _RANK, _WORLD = td.get_rank(), td.get_world_size()


def shutdown() -> None:
    """Leave the process group (if an engine's close() has not torn it down already)."""
    global _RANK, _WORLD
    if _WORLD > 1 and td.is_initialized():
        td.destroy_process_group()
    _RANK, _WORLD = 0, 1


def shard(n: int) -> tuple[int, int]:
    """This rank's contiguous share [lo, hi) of n items (all of them on one process)."""
    return n * _RANK // _WORLD, n * (_RANK + 1) // _WORLD


def barrier() -> None:
    if _WORLD > 1:
        td.barrier()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks, in float64 (the logged loss and stats)."""
    if _WORLD == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    td.all_reduce(t)
    return t.tolist()


def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum every parameter's gradient over the ranks in one flat float32 all-reduce; a rank that
    trained nothing sends zeros. Afterwards every parameter has the summed gradient."""
    if _WORLD == 1:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    td.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects); [obj] on one process."""
    if _WORLD == 1:
        return [obj]
    out = [None] * _WORLD
    td.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if _WORLD == 1:
        return obj
    box = [obj if _RANK == 0 else None]
    td.broadcast_object_list(box, src=0, device=_device())
    return box[0]


def broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    """Overwrite `tensors` with rank 0's values, in place."""
    if _WORLD == 1:
        return
    with torch.no_grad():
        for t in tensors:
            td.broadcast(t.data, src=0)
