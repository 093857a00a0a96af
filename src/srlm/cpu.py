"""CPU threads: how many cores are free, and torch's intra-op thread count set from it.

On a host that other processes keep busy, torch threads beyond the free cores wait on each other at every
op's barrier: on this project's loaded 2-core machine SmolLM2-135M decoded about 10 tokens/s with 2 threads
and 35-66 with 1, and one matrix product took 23.8 ms against 4.5 ms.
"""

from __future__ import annotations

import os
import sys

import torch


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def free_cores() -> int:
    """Cores not kept busy by other processes: usable cores minus the 1-minute load average, at least 1."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return usable_cores()
    return max(1, min(usable_cores(), round(usable_cores() - load)))


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op threads: `requested`, else (when OMP_NUM_THREADS does not already say) the cores
    free now. Warns once, in one line, when the count exceeds the free cores. Returns the count."""
    if requested is not None:
        torch.set_num_threads(max(1, requested))
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(free_cores())
    threads, free = torch.get_num_threads(), free_cores()
    if threads > free:
        print(f"srlm: warning: torch uses {threads} threads but only {free} of {usable_cores()} cores are free "
              f"(other processes keep the rest busy); oversubscribed threads run slower: try --threads {free}",
              file=sys.stderr, flush=True)
    return threads
