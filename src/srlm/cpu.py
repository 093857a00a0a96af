"""CPU threads: how many cores are free, and torch's intra-op thread count set from it.

On a host that other processes keep busy, torch threads beyond the free cores wait on each other at every
op's barrier: on this project's loaded 2-core machine SmolLM2-135M decoded about 10 tokens/s with 2 threads
and 35-66 with 1, and one matrix product took 23.8 ms against 4.5 ms.
"""

from __future__ import annotations

import os
import sys
import time

import torch


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


# How long `busy_cores_now` watches the CPU counters: a few scheduler ticks per core, short enough to pay at
# every start.
BUSY_WINDOW_S = 0.1


def busy_cores_now(window: float = BUSY_WINDOW_S) -> float | None:
    """Cores kept busy over the next `window` seconds, from the kernel's CPU time counters (/proc/stat); None
    where there are none (not Linux)."""
    def counters() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(fields) - fields[3] - fields[4], sum(fields)

    try:
        busy0, total0 = counters()
        time.sleep(window)
        busy1, total1 = counters()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def free_cores() -> int:
    """Cores not kept busy by other processes, at least 1: usable cores minus the 1-minute load average, or
    minus the cores busy right now when that leaves more. The load average lags: for a minute after a job
    ends it still counts it, and a run started then would take 1 thread on an idle 2-core machine."""
    cores = usable_cores()
    try:
        by_load = round(cores - os.getloadavg()[0])
    except OSError:
        by_load = cores
    busy = busy_cores_now()
    now = round(cores - busy) if busy is not None else by_load
    return max(1, min(cores, max(by_load, now)))


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op threads: `requested`, else (when OMP_NUM_THREADS does not already say) the cores
    free now. Warns once, in one line, when the count exceeds the free cores. Returns the count."""
    free = free_cores()
    if requested is not None:
        torch.set_num_threads(max(1, requested))
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(free)
    threads = torch.get_num_threads()
    if threads > free:
        print(f"srlm: warning: torch uses {threads} threads but only {free} of {usable_cores()} cores are free "
              f"(other processes keep the rest busy); oversubscribed threads run slower: try --threads {free}",
              file=sys.stderr, flush=True)
    return threads
