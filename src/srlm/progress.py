"""One overall progress line across a run: `[stage k of n] what | elapsed | about T left`.

The run counts its units of work up front, per kind (every distinct stage, every evaluation); a stage found
done is counted without printing. The estimate adds, per kind, the units left times the mean wall time of
that kind's units so far, and appears once every kind still to come has run once: a rough guide, printed
with "about".

The tracker is a context variable set by `pipeline.run_all`, so the stage functions need no new argument;
without one (a stage run alone, a test), `announce` and `skip` do nothing.
"""

from __future__ import annotations

import time
from collections import Counter
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
    """`plan`: how many units of each kind (`pretrain`, `sft`, ..., `eval`) the run takes."""

    def __init__(self, plan: dict[str, int], clock=time.monotonic, write=_print_line):
        self.plan, self.clock, self.write = Counter(plan), clock, write
        self.total = sum(self.plan.values())
        self.t0 = clock()
        self.seen: set[str] = set()
        self.seen_kinds: Counter = Counter()  # units reached (run or skipped) per kind
        self.seconds: dict[str, list[float]] = {}  # kind -> wall times of the units that ran
        self.current: tuple[str, float] | None = None  # (kind, start) of the unit running now
        self.pipeline = ""  # the pipeline whose stage runs next, for the line

    def _close_current(self) -> None:
        if self.current is not None:
            kind, start = self.current
            self.seconds.setdefault(kind, []).append(self.clock() - start)
            self.current = None

    def skip(self, unit: str, kind: str) -> None:
        """`unit` was already done: it counts toward k, not toward the time estimate."""
        self._close_current()
        if unit not in self.seen:
            self.seen.add(unit)
            self.seen_kinds[kind] += 1

    def estimate_left(self) -> float | None:
        """Seconds left: per kind, the units not yet reached (and the one starting now) times the mean time of
        that kind's units so far. None until every kind still to come has run once: one pre-training is no
        guide to an evaluation."""
        left = 0.0
        for kind, planned in self.plan.items():
            todo = max(0, planned - self.seen_kinds[kind]) + (self.current is not None and self.current[0] == kind)
            if todo:
                if kind not in self.seconds:
                    return None
                left += todo * sum(self.seconds[kind]) / len(self.seconds[kind])
        return left

    def announce(self, unit: str, what: str, kind: str) -> None:
        """`unit` starts now: print the line (once per unit, however many pipelines share it)."""
        if unit in self.seen:
            return
        self._close_current()
        self.seen.add(unit)
        self.seen_kinds[kind] += 1
        k = len(self.seen)
        now = self.clock()
        self.current = (kind, now)
        where = f"{self.pipeline}: " if self.pipeline else ""
        line = f"[stage {k} of {max(k, self.total)}] {where}{what} | {duration(now - self.t0)} elapsed"
        left = self.estimate_left()
        if left is not None:
            line += f" | about {duration(left)} left"
        self.write(line)

    def finish(self) -> None:
        self._close_current()
        self.write(f"[done] {len(self.seen)} stages in {duration(self.clock() - self.t0)}")


TRACKER: ContextVar[RunProgress | None] = ContextVar("srlm_run_progress", default=None)


def announce(unit: str, what: str, kind: str) -> None:
    if (t := TRACKER.get()) is not None:
        t.announce(unit, what, kind)


def in_pipeline(name: str) -> None:
    if (t := TRACKER.get()) is not None:
        t.pipeline = name


def skip(unit: str, kind: str) -> None:
    if (t := TRACKER.get()) is not None:
        t.skip(unit, kind)


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
