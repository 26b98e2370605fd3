"""How many threads torch gets: the cores other processes leave free.

torch starts one OpenMP thread per core, and at the end of every parallel region
the threads wait for each other by spinning. Where another process holds one of
the cores, the thread on it runs late and its partner spins meanwhile, so a small
network's many short regions cost several times their arithmetic: on 2 cores
shared with other jobs (load 4–6), 60 + 60 steps of :func:`sxtlab.sparse.fit_sparse`
on ``sample_12`` took 40 s wall and 21 s CPU on one thread, 376 s wall and 145 s
CPU on two. The command line, the tutorials and a study's workers therefore give
torch only the cores that are free.
"""

from __future__ import annotations

import logging
import os

__all__ = ["use_free_cores", "free_cores", "usable_cores"]

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The CPUs this process may use: its affinity where the system has one, else all."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_cores() -> int:
    """The CPUs this process may use (its affinity) less the 1-minute load average, at least one."""
    cpus = usable_cores()
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cpus, cpus - round(busy)))


def use_free_cores() -> int:
    """Give torch as many threads as other processes leave cores free.

    "Free" is the CPUs this process may use (its affinity) less the 1-minute load
    average, at least one; call it before heavy work, while this process is idle.
    An explicit ``OMP_NUM_THREADS`` in the environment is left to decide.

    Returns
    -------
    int
        The number of threads torch now uses.

    Examples
    --------
    >>> import sxtlab
    >>> sxtlab.use_free_cores() >= 1
    True
    """
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    threads = free_cores()
    torch.set_num_threads(threads)
    log.info("torch threads: %d (load %.1f)", threads, os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
    return threads
