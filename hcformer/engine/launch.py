"""Start one training process per device, also on machines without CUDA.

With CUDA this is detectron2's ``launch``, unchanged (NCCL, one process per GPU). detectron2
v0.6's ``launch`` asserts CUDA and hard-codes NCCL, so without CUDA the processes are started
here instead: ``num_gpus_per_machine`` CPU processes per machine joined by the gloo backend,
with the same process groups detectron2's ``comm`` expects (the global group, and the
per-machine group behind ``comm.get_local_rank()`` / ``get_local_size()``, made by
``hcformer.detectron2_compat`` on v0.6). The Trainer then
wraps the model in a CPU DistributedDataParallel; rank 0 alone writes checkpoints and metrics.

Several machines: start the same command on every machine with ``--num-machines N``,
``--machine-rank`` 0..N-1 and ``--dist-url tcp://<address of machine 0>:<free port>``.
"""
import logging
import socket
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from hcformer.detectron2_compat import create_local_process_group

__all__ = ["DEFAULT_TIMEOUT", "launch"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    processes_per_machine: int,
    num_machines: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence[Any],
    timeout: timedelta,
) -> None:
    world_size = processes_per_machine * num_machines
    rank = machine_rank * processes_per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
    )
    try:
        create_local_process_group(processes_per_machine, machine_rank, num_machines)
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine * num_machines`` processes.

    Args:
        num_gpus_per_machine: processes on this machine; without CUDA, CPU processes.
        dist_url: ``tcp://host:port`` of machine 0 (the rendezvous), or "auto" for a free
            local port (one machine only).
    """
    if torch.cuda.is_available():
        d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=tuple(args),
            timeout=timeout,
        )
        return
    if num_gpus_per_machine < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine}, --num-machines {num_machines}, --machine-rank "
            f"{machine_rank}: expected at least one process and machine, and 0 <= rank < machines"
        )
    if num_gpus_per_machine * num_machines == 1:
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines > 1:
            raise ValueError(
                "--dist-url auto works on one machine only; with --num-machines > 1 pass "
                "--dist-url tcp://<address of machine 0>:<free port> on every machine"
            )
        dist_url = f"tcp://127.0.0.1:{_free_local_port()}"
    logger.info(
        f"No CUDA: starting {num_gpus_per_machine} CPU process(es) on machine {machine_rank} "
        f"of {num_machines} (gloo, {dist_url})"
    )
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, tuple(args), timeout),
        daemon=False,
        start_method="spawn",
    )
