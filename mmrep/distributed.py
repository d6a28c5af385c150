"""torch.distributed for every mmrep module: process-group setup, rank / world size, gathers.

A launcher (`deepspeed`, `torchrun`) sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*; a plain `python`
process gets a one-process group on a free port. On CPU the backend is gloo. DeepSpeed's shared-memory
comm op is never JIT-built (30-70 s on first init, and nothing here needs it).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the sweep agent reads LAUNCHER_ENV without loading torch.
# What a launcher sets; a child process that must form its own group drops them (mmrep.sweeps.agent).
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised group; (0, 1) when there is none."""
    import torch.distributed as dist

    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launcher_rank_world() -> tuple[int, int]:
    """(rank, world size) as the launcher's environment says, before any group exists."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _single_process_env() -> None:
    """A plain `python` process: a one-process group on a free local port, no MPI discovery."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))


def _skip_shm_comm() -> None:
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # DeepSpeed's own gate for that op


def init_deepspeed() -> tuple[int, int]:
    """The training group, initialised through DeepSpeed (NCCL on GPU, gloo on CPU); works without a
    launcher. Splits the CPU cores between local ranks when OMP_NUM_THREADS is unset. -> (rank, world)."""
    import deepspeed
    import torch
    import torch.distributed as dist

    _single_process_env()
    _skip_shm_comm()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if "OMP_NUM_THREADS" not in os.environ and local_world > 1:
        # the launcher does not split the cores between ranks; oversubscription slows every rank
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=None if torch.cuda.is_available() else "gloo",
                                   auto_mpi_discovery=False, verbose=False)
    return dist.get_rank(), dist.get_world_size()


def init_single_process_deepspeed() -> None:
    """A gloo group for DeepSpeed-MoE layers built in a plain single process (tests, export), if nobody has."""
    import deepspeed

    if is_initialized():
        return
    _skip_shm_comm()
    _single_process_env()
    deepspeed.init_distributed(dist_backend="gloo")


def init_gloo_from_launcher(timeout: timedelta = timedelta(hours=2)) -> tuple[int, int]:
    """(rank, world) from the launcher's environment; a gloo group when world > 1 (CPU-side coordination:
    export parts, barriers). A single process gets no group."""
    import torch.distributed as dist

    rank, world = launcher_rank_world()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    return rank, world


def barrier() -> None:
    import torch.distributed as dist

    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks (in place on `values`, which is returned)."""
    import torch.distributed as dist

    if rank_world()[1] > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (in place on `values`, which is returned)."""
    import torch.distributed as dist

    if rank_world()[1] > 1:
        dist.all_reduce(values)
    return values


def all_gather_objects(obj, group=None) -> list:
    """Every rank's picklable `obj` (trusted: produced by mmrep in this job), in rank order."""
    import torch.distributed as dist

    if not is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (W*B, ...) in rank order; gradients flow back to every rank's part.

    Every rank must pass the same B (pad and mask otherwise)."""
    import torch

    if rank_world()[1] == 1:
        return x
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(x.contiguous()), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (W*B, ...) without autograd (ids, masks, categories)."""
    import torch
    import torch.distributed as dist

    size = rank_world()[1]
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a (no-grad) tensor over ranks."""
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value
