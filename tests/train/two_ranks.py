"""Two gloo ranks in spawned processes, for the distributed loss/objective tests."""

from __future__ import annotations

import torch


def run_two_ranks(target, args, store) -> list:
    """Run target(rank, store, *args, out) on 2 gloo ranks (file rendezvous: no port races); returns the
    two results put on `out`, sorted by rank."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    procs = [ctx.Process(target=_run_and_exit, args=(target, r, str(store), *args, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    return sorted([out.get(), out.get()])


def _run_and_exit(target, *args) -> None:
    """Run one rank, then leave with os._exit: the result is already on the queue (SimpleQueue writes
    synchronously), and skipping interpreter teardown avoids a rare abort ("terminate called without an
    active exception") from gloo / autograd threads being destroyed at exit."""
    import os
    import traceback

    code = 0
    try:
        target(*args)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def init_rank(rank: int, store: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)


def close_rank() -> None:
    import torch.distributed as dist

    dist.barrier()  # nobody tears down while the other rank still talks
    dist.destroy_process_group()
