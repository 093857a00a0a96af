"""Resume checkpoints: the model (or adapter), optimizer, scheduler, RNG states of every process and the
data position, written atomically, so killing a run and starting it again continues exactly."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch

from srlm.faults import fault_point
from srlm.files import replace_folder
from srlm.train.distributed import Dist, all_gather_objects, full_state_dict


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


def save_resume_checkpoint(folder: Path, model, optimizer, scheduler, step: int, extra: dict,
                           d: Dist | None = None) -> None:
    """Everything needed to continue at `step`, written to `folder` atomically.

    Without `d` it is called on the main process only and saves that process's RNG state. With `d` every
    process calls it: each one's RNG state is gathered (so dropout continues exactly on every rank), FSDP
    shards are gathered into full model and optimizer state dicts, and rank 0 writes.
    """
    folder = Path(folder)
    d = d or Dist()
    rngs = all_gather_objects(rng_state(), d)
    model_sd = full_state_dict(model, d)
    opt_sd = _full_optimizer_state(model, optimizer, d)
    if not d.main:
        return
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if model_sd is not None:
        model.save_pretrained(tmp / "model", state_dict=model_sd)
    else:
        model.save_pretrained(tmp / "model")  # a peft model writes only its adapter here
    fault_point("checkpoint:mid_write", step=step)
    torch.save(
        {"optimizer": opt_sd, "scheduler": scheduler.state_dict(), "step": step,
         "rng": rngs[0], "rng_per_rank": rngs, "extra": extra},
        tmp / "trainer_state.pt",
    )
    replace_folder(tmp, folder)


def _full_optimizer_state(model, optimizer, d: Dist) -> dict:
    if not d.sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_resume_checkpoint(folder: Path, model, optimizer, scheduler, d: Dist | None = None) -> tuple[int, dict]:
    """Restore weights, optimizer, scheduler and RNG from `folder`; return (step, extra).

    Every process calls it (each restores its own RNG state when the checkpoint has one per rank).
    """
    from safetensors.torch import load_file

    d = d or Dist()
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
        if d.sharded:
            _load_sharded(model, optimizer, weights, state["optimizer"])
        else:
            missing, unexpected = model.load_state_dict(weights, strict=False)
            # tied embeddings are saved once: lm_head may legitimately be missing
            real_missing = [k for k in missing if "lm_head" not in k]
            if real_missing or unexpected:
                raise RuntimeError(f"checkpoint {model_dir} does not match the model: missing {real_missing[:5]}, "
                                   f"unexpected {unexpected[:5]}")
    if not d.sharded:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    per_rank = state.get("rng_per_rank")
    set_rng_state(per_rank[d.rank] if per_rank and d.rank < len(per_rank) else state["rng"])
    return int(state["step"]), state.get("extra", {})


def _load_sharded(model, optimizer, weights: dict, opt_state: dict) -> None:
    """Scatter full model and optimizer state dicts (identical on every rank) into FSDP shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied and "lm_head.weight" not in weights:
        for k in list(weights):
            if k.endswith("embed_tokens.weight"):
                weights["lm_head.weight"] = weights[k]
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=opts)
    set_optimizer_state_dict(model, optimizer, opt_state, options=opts)
