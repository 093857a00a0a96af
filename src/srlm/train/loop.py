"""What every training stage shares: optimizer, schedule, clipping, metrics, checkpoints and resume.

The stage files (`pretrain.py`, `sft.py`, `grpo.py`) keep their loops in view and call these helpers for
the bookkeeping. A resumable checkpoint holds the model (or adapter), optimizer, scheduler, RNG states and
the data position, written atomically, so killing a run and starting it again continues exactly.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# ------------------------------------------------------------------------------------------ optimizer


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases and norms (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, total: int, warmup_ratio: float, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio`; `step` counts completed updates."""
    warmup = int(round(warmup_ratio * total))
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(opt, cfg, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    )


def clip_and_step(model, opt, sched, max_grad_norm: float) -> float:
    """Clip gradients, step optimizer and schedule, zero gradients; return the pre-clip grad norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


# ------------------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    """Where this process sits under torchrun / accelerate launch (world 1 when run plainly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group the launcher set up (gloo on CPU, nccl on GPU); no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def sum_gradients(model, d: Dist) -> None:
    """Sum gradients across processes. Losses are normalised by the whole step's token count (known to
    every rank from the data plan), so the sum is exactly the single-process gradient. One all-reduce per
    tensor, instead of DDP hooks, keeps the stage loops plain PyTorch with no no_sync bookkeeping."""
    if d.world == 1:
        return
    import torch.distributed as dist

    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def all_reduce_sum(value: float, d: Dist) -> float:
    if d.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def broadcast_parameters(model, d: Dist) -> None:
    """Start every process from rank 0's weights."""
    if d.world == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p.data, 0)


# ------------------------------------------------------------------------------------------- metrics


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

    def close(self) -> None:
        if self.enabled:
            self._f.close()


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


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


# ----------------------------------------------------------------------------------------- checkpoints


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_resume_checkpoint(folder: Path, model, optimizer, scheduler, step: int, extra: dict) -> None:
    """Everything needed to continue at `step`, written to `folder` atomically."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model")  # a peft model writes only its adapter here
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
         "rng": rng_state(), "extra": extra},
        tmp / "trainer_state.pt",
    )
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def load_resume_checkpoint(folder: Path, model, optimizer, scheduler) -> tuple[int, dict]:
    """Restore weights, optimizer, scheduler and RNG from `folder`; return (step, extra)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    model_dir = folder / "model"
    if (model_dir / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(model_dir / "adapter_model.safetensors")))
    else:
        weights = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            weights.update(load_file(str(f)))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        # tied embeddings are saved once: lm_head may legitimately be missing
        real_missing = [k for k in missing if "lm_head" not in k]
        if real_missing or unexpected:
            raise RuntimeError(f"checkpoint {model_dir} does not match the model: missing {real_missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"]), state.get("extra", {})
