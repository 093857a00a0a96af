"""A stage's metrics: metrics.jsonl (`MetricsLog`, resumable), optional external sinks, the progress bar
and per-phase timers.

Optional logging sinks, read from the environment so configs stay backend-free: `SRLM_TENSORBOARD=DIR`
writes TensorBoard events, `SRLM_WANDB=1` logs to Weights & Biases (`WANDB_MODE=offline` works).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from srlm.files import atomic_write_text


class ExternalSinks:
    """TensorBoard and Weights & Biases, switched on from the environment, imported only when asked for.

    A missing package is one warning line, never a failed run: these are conveniences, metrics.jsonl is
    the record.
    """

    def __init__(self, run_dir: Path):
        self.tb = None
        self.wandb = None
        tb_dir = os.environ.get("SRLM_TENSORBOARD")
        if tb_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(tb_dir) / Path(run_dir).name))
            except ImportError:
                print("srlm: SRLM_TENSORBOARD is set but tensorboard is not installed; skipping it",
                      file=sys.stderr)
        if os.environ.get("SRLM_WANDB", "0") not in ("", "0"):
            try:
                import wandb

                self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "srlm"),
                                        name=Path(run_dir).name, dir=str(run_dir), reinit="finish_previous")
            except ImportError:
                print("srlm: SRLM_WANDB is set but wandb is not installed; skipping it", file=sys.stderr)

    def log(self, record: dict) -> None:
        step = int(record.get("step", 0))
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class MetricsLog:
    """Append-only `metrics.jsonl`, one JSON object per step, flushed as written.

    On resume, lines beyond the resumed step are dropped first, so the file always describes exactly the
    steps that the final weights went through.
    """

    def __init__(self, path: Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.sinks = ExternalSinks(self.path.parent)
        kept = []
        if self.path.exists() and resume_step > 0:
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is gone too
        atomic_write_text(self.path, "".join(x + "\n" for x in kept))
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        if self.enabled:
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()
            self.sinks.log(record)

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            self.sinks.close()


def progress_bar(total: int, desc: str, initial: int = 0, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)


@dataclass
class Timer:
    """Accumulates wall seconds per named phase (generate / score / train ...)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def phase(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.t0

        return _Phase()
