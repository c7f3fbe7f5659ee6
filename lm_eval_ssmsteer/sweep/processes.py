"""A sweep under ``accelerate launch`` (or ``torchrun``): each process evaluates its share of the cells on
its own device, as an independent single-process evaluation, and they meet once at the end.

Both launchers tell each process its place in environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``). Left there, they would make lm-eval and accelerate treat the processes as one data-parallel
evaluation, splitting every cell's documents among them in lock-step; ``detach`` removes them once read, so
that each process runs whole cells. The processes then share nothing but the folder and three gloo
barriers: every process has checked the folder before the first writes into it, the first has recorded the
sweep before any evaluates, and every process has finished before the first writes the leaderboard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

# what launchers set to describe the process group: read here, then hidden from lm-eval and accelerate
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK")
# cells of different lengths: a process may wait long for the slowest one
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    local_rank: int

    @property
    def first(self) -> bool:
        return self.rank == 0


def launched(environ: dict[str, str] | None = None) -> Process:
    """This process's place in a launch, from the launcher's variables; a lone process is rank 0 of 1."""
    environ = os.environ if environ is None else environ
    world_size = int(environ.get("WORLD_SIZE", "1"))
    rank = int(environ.get("RANK", "0"))
    local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world_size}: not a process of the launch")
    return Process(rank, world_size, local_rank)


def detach(process: Process) -> None:
    """Join the launch's gloo group (for ``barrier``), then hide the launch from lm-eval and accelerate."""
    if process.world_size == 1:
        return
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=process.rank, world_size=process.world_size, timeout=BARRIER_TIMEOUT)
    for name in LAUNCH_VARIABLES:
        os.environ.pop(name, None)


def barrier(process: Process) -> None:
    """Wait until every process of the launch has come here."""
    if process.world_size == 1:
        return
    import torch.distributed as dist

    dist.barrier()


def leave(process: Process) -> None:
    """Wait until every process of the launch has evaluated its cells, then leave the group."""
    if process.world_size == 1:
        return
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def device_for(device: str | None, process: Process) -> str | None:
    """Each process of a launch on its own GPU: ``cuda`` (or none given, with CUDA present) becomes
    ``cuda:<local rank>``; a lone process keeps what was given."""
    if process.world_size == 1:
        return device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"cuda:{process.local_rank}" if device == "cuda" else device
