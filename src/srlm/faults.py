"""Fault injection: `SRLM_FAULT` makes the process kill itself, hard, at a named point.

Tests of kill-and-resume use it instead of timing a `kill -9` from outside: the kill lands exactly where
asked, on a fast machine or a loaded one. The process dies by SIGKILL (no `finally`, no atexit, no flush),
like a power cut or an OOM kill, so what is on disk is exactly what a real crash would leave.

    SRLM_FAULT=<point>[:<counter>=<value>...][,<another fault>...]

`<point>` is the name a `fault_point` call passes (`sft`, `grpo:after_generate`, `checkpoint:mid_write`,
...). The fault fires at the first call of that point whose counters equal every `<counter>=<value>`
given (compared as text); counters the call passes but the fault does not name match anything. The
counter `hit=N` is kept here: the N-th call of the point that matches the other counters. Examples:
`sft:step=5` (after SFT step 5), `eval:after_problem=17`, `checkpoint:mid_write:hit=2`.
The points are listed in docs/architecture.md ("Fault injection").
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field

ENV = "SRLM_FAULT"


@dataclass
class Fault:
    point: str
    counters: dict[str, str] = field(default_factory=dict)
    hits: int = 0  # matching calls so far (for the `hit` counter)


def parse(spec: str) -> list[Fault]:
    """`sft:step=5,report:mid_write` -> [Fault('sft', {'step': '5'}), Fault('report:mid_write')]."""
    faults = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        names, counters = [], {}
        for part in item.split(":"):
            if "=" in part:
                key, value = part.split("=", 1)
                counters[key.strip()] = value.strip()
            else:
                names.append(part.strip())
        if not names or not all(names):
            raise ValueError(f"{ENV}={spec!r}: {item!r} names no fault point")
        faults.append(Fault(":".join(names), counters))
    return faults


_parsed: tuple[str, list[Fault]] | None = None


def _active() -> list[Fault]:
    global _parsed
    spec = os.environ.get(ENV, "")
    if _parsed is None or _parsed[0] != spec:
        _parsed = (spec, parse(spec))
    return _parsed[1]


def fault_point(name: str, **counters) -> None:
    """Kill this process now if `SRLM_FAULT` names this point with these counters; else return at once."""
    if not os.environ.get(ENV):  # the common case: one dict lookup
        return
    for fault in _active():
        if fault.point != name:
            continue
        wanted = {k: v for k, v in fault.counters.items() if k != "hit"}
        if any(str(counters.get(k)) != v for k, v in wanted.items()):
            continue
        fault.hits += 1
        if "hit" in fault.counters and str(fault.hits) != fault.counters["hit"]:
            continue
        shown = ":".join([name, *(f"{k}={v}" for k, v in counters.items())])
        os.write(2, f"srlm: {ENV}: killed at {shown}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(137)  # not reached: SIGKILL cannot be caught
