"""One overall progress line across a run: `[stage k of n] what | elapsed | about T left`.

The run counts its units of work up front (every distinct stage, every evaluation); a stage found done is
counted without printing. The estimate is the mean wall time of the units run so far times the units
left: stages differ in length, so it is a rough guide, printed with "about".

The tracker is a context variable set by `pipeline.run_all`, so the stage functions need no new argument;
without one (a stage run alone, a test), `announce` and `skip` do nothing.
"""

from __future__ import annotations

import time
from contextvars import ContextVar


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _print_line(line: str) -> None:
    print(line, flush=True)


class RunProgress:
    def __init__(self, total: int, clock=time.monotonic, write=_print_line):
        self.total, self.clock, self.write = total, clock, write
        self.t0 = clock()
        self.seen: set[str] = set()
        self.ran = 0  # units run (not skipped) before the current one
        self.ran_seconds = 0.0
        self.current_start: float | None = None
        self.pipeline = ""  # the pipeline whose stage runs next, for the line

    def _close_current(self) -> None:
        if self.current_start is not None:
            self.ran += 1
            self.ran_seconds += self.clock() - self.current_start
            self.current_start = None

    def skip(self, unit: str) -> None:
        """`unit` was already done: it counts toward k, not toward the time estimate."""
        self._close_current()
        self.seen.add(unit)

    def announce(self, unit: str, what: str) -> None:
        """`unit` starts now: print the line (once per unit, however many pipelines share it)."""
        if unit in self.seen:
            return
        self._close_current()
        self.seen.add(unit)
        k = len(self.seen)
        now = self.clock()
        where = f"{self.pipeline}: " if self.pipeline else ""
        line = f"[stage {k} of {max(k, self.total)}] {where}{what} | {duration(now - self.t0)} elapsed"
        left = max(0, self.total - k + 1)
        if self.ran:
            line += f" | about {duration(self.ran_seconds / self.ran * left)} left"
        self.write(line)
        self.current_start = now

    def finish(self) -> None:
        self._close_current()
        self.write(f"[done] {len(self.seen)} stages in {duration(self.clock() - self.t0)}")


TRACKER: ContextVar[RunProgress | None] = ContextVar("srlm_run_progress", default=None)


def announce(unit: str, what: str) -> None:
    if (t := TRACKER.get()) is not None:
        t.announce(unit, what)


def in_pipeline(name: str) -> None:
    if (t := TRACKER.get()) is not None:
        t.pipeline = name


def skip(unit: str) -> None:
    if (t := TRACKER.get()) is not None:
        t.skip(unit)


def silence_library_bars() -> None:
    """Turn off the progress bars of transformers, huggingface_hub and datasets (`--no-progress`)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # inherited by subprocesses and torchrun workers
    try:
        from transformers.utils import logging as tf_logging

        tf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
