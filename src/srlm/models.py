"""Loading and saving models and tokenizers (local folder or hub id), LoRA apply/merge, devices.

Weights load through safetensors (transformers' default); remote code only when the user asks for it.
Saving is atomic: a checkpoint folder appears complete or not at all.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from srlm.errors import UserError
from srlm.faults import fault_point
from srlm.files import replace_folder


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA when available, else CPU. The local rank picks the GPU under torchrun/accelerate."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' requested but no CUDA device is available; use device=cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _gguf_args(name_or_path: str | Path) -> tuple[str, dict]:
    """(what from_pretrained takes, extra keyword arguments): a `.gguf` file loads from its folder with
    `gguf_file=` (transformers reads it with the `gguf` package and dequantizes every tensor)."""
    p = Path(name_or_path)
    if p.suffix == ".gguf" and p.is_file():
        return str(p.parent), {"gguf_file": p.name}
    return str(name_or_path), {}


# `model.trust_remote_code` of the run (set by `allow_remote_code`): every load of the run follows it, the
# start model's and each stage's checkpoint of that model alike.
_REMOTE_CODE = False


def allow_remote_code(allowed: bool) -> None:
    """Let model and tokenizer loads run code shipped with the model (`model.trust_remote_code`); warns."""
    global _REMOTE_CODE
    if allowed and not _REMOTE_CODE:
        print("srlm: warning: model.trust_remote_code is on: Python code shipped with the model will run on this "
              "machine", file=sys.stderr, flush=True)
    _REMOTE_CODE = bool(allowed)


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool | None = None):
    from transformers import AutoTokenizer

    trust_remote_code = _REMOTE_CODE if trust_remote_code is None else trust_remote_code
    _check_exists(name_or_path)
    where, extra = _gguf_args(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load a tokenizer from {name_or_path}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # decoder-only models often ship without one; padding is masked anyway
    return tok


def load_model(name_or_path: str | Path, device: torch.device, dtype: str = "auto",
               trust_remote_code: bool | None = None):
    """(model, tokenizer) from a local folder, a `.gguf` file or a hub id, on `device`, in train mode.
    `trust_remote_code` None follows the run's setting (`allow_remote_code`)."""
    from transformers import AutoModelForCausalLM

    trust_remote_code = _REMOTE_CODE if trust_remote_code is None else trust_remote_code

    tok = load_tokenizer(name_or_path, trust_remote_code)
    where, extra = _gguf_args(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code, **extra
        )
    except (OSError, ValueError, ImportError) as e:
        raise UserError(f"could not load a model from {name_or_path}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - safetensors' own error type: a corrupt, truncated or empty file
        if "safetensor" not in type(e).__name__.lower():
            raise
        raise UserError(f"{name_or_path}: the weights file is damaged ({str(e).splitlines()[0]}); "
                        f"{_redo_hint(name_or_path)}") from None
    if extra:
        _forget_quantization(model)
    model.to(device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _redo_hint(name_or_path) -> str:
    """What to do about a damaged model folder: a stage's checkpoint is redone by deleting its stage folder."""
    p = Path(name_or_path)
    if p.name == "checkpoint" and (p.parent / "manifest.json").exists():
        return f"delete the stage folder {p.parent} and re-run to redo that stage"
    return "restore or re-download the model"


def _forget_quantization(model) -> None:
    """A GGUF checkpoint arrives dequantized but still labelled quantized, which transformers refuses to
    save; the weights are ordinary tensors, so drop the label and save them as any other checkpoint."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write a `.gguf` checkpoint as an ordinary safetensors model folder (tokenizer and chat template
    included, no quantization config), atomically."""
    model, tok = load_model(gguf_file, torch.device("cpu"), dtype=dtype)
    return save_model(model, tok, out_dir)


def _check_exists(name_or_path: str | Path) -> None:
    p = Path(name_or_path)
    if p.suffix == ".gguf" and p.is_file():
        return
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists():
            raise UserError(f"model folder {p} has no config.json: is it a model folder?")
        return
    if not _looks_like_hub_id(str(name_or_path)):
        raise UserError(f"model path not found: {name_or_path} (not a folder, and not a hub id like 'org/name')")


def save_model(model, tokenizer, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Write a complete, loadable model folder atomically (temp folder, then rename).

    A peft model is saved twice: its adapter in `adapter/` (what LoRA trained) and the merged full model
    at the top (what the next stage and evaluation load), so nothing downstream needs to know about LoRA.
    `state_dict` replaces the model's own (FSDP: the full weights gathered from the shards).
    """
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if is_peft(model):
        model.save_pretrained(tmp / "adapter")
        merged = merged_copy(model)
        merged.save_pretrained(tmp)
    else:
        model.save_pretrained(tmp, state_dict=state_dict)
    fault_point("model:mid_write")
    tokenizer.save_pretrained(tmp)
    replace_folder(tmp, out)
    return out


# ----------------------------------------------------------------------------------------------- LoRA


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def apply_lora(model, lora_cfg, tokenizer=None):
    """Wrap `model` with trainable LoRA adapters; every base weight is frozen, except the embedding rows
    of `lora_cfg.trainable_tokens` (peft's trainable tokens, tied output rows included)."""
    from peft import LoraConfig, get_peft_model

    present = {name.split(".")[-1] for name, _ in model.named_modules()}
    targets = [t for t in lora_cfg.target_modules if t in present]
    if not targets:
        raise UserError(f"lora.target_modules {lora_cfg.target_modules} match no module of this model; "
                        f"some module names: {sorted(present)[:12]}")
    token_ids = None
    if lora_cfg.trainable_tokens:
        if tokenizer is None:
            raise ValueError("apply_lora needs the tokenizer to resolve lora.trainable_tokens")
        vocab = tokenizer.get_vocab()
        unknown = [t for t in lora_cfg.trainable_tokens if t not in vocab]
        if unknown:
            raise UserError(f"lora.trainable_tokens: {unknown} are not single tokens of this tokenizer")
        token_ids = [vocab[t] for t in lora_cfg.trainable_tokens]
    cfg = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                     target_modules=targets, trainable_token_indices=token_ids, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    _dropout_without_copies(peft_model)
    return peft_model


def _dropout_without_copies(peft_model) -> None:
    """Move each adapter's dropout into its A projection (`SeededDropoutLinear`): peft's `lora_A(dropout(x))`
    keeps the dropped-out copy of every adapted layer's input for backward (7 per block), this keeps none."""
    for module in peft_model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            down = module.lora_A[name] if name in module.lora_A else None
            if isinstance(drop, torch.nn.Dropout) and drop.p > 0 and type(down) is torch.nn.Linear and down.bias is None:
                down.__class__ = SeededDropoutLinear  # same parameters and state-dict keys, so saving is unchanged
                down.dropout_p = drop.p
                drops[name] = torch.nn.Identity()


def dropout_keep_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The kept positions (bool, shaped like `x`) of a dropout with rate `p`, drawn from `seed` alone."""
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    return torch.rand(x.shape, generator=gen, device=x.device, dtype=torch.float32) >= p


class _SeededDropoutProjection(torch.autograd.Function):
    """dropout(x) @ weight.T, keeping for backward only `x` (which the adapted layer's other users keep
    anyway) and a seed: backward redraws the same mask instead of autograd saving the dropped copy."""

    @staticmethod
    def forward(ctx, x, weight, p: float, seed: int):  # x [..., in], weight [r, in] -> [..., r]
        ctx.save_for_backward(x, weight)
        ctx.p, ctx.seed = p, seed
        return torch.nn.functional.linear(x * dropout_keep_mask(x, p, seed) / (1 - p), weight)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out [..., r]
        x, weight = ctx.saved_tensors
        keep = dropout_keep_mask(x, ctx.p, ctx.seed)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_out.to(weight.dtype) @ weight).to(x.dtype) * keep / (1 - ctx.p)
        if ctx.needs_input_grad[1]:
            dropped = (x * keep / (1 - ctx.p)).reshape(-1, x.shape[-1])  # [N, in]
            grad_w = (grad_out.reshape(-1, grad_out.shape[-1]).to(dropped.dtype).T @ dropped).to(weight.dtype)
        return grad_x, grad_w, None, None


class SeededDropoutLinear(torch.nn.Linear):
    """A LoRA A projection with its input dropout built in (`dropout_p`), the mask drawn from a seed taken
    from torch's default generator (so `torch.manual_seed` repeats it) and redrawn in backward."""

    dropout_p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout_p == 0:
            return super().forward(x)
        seed = int(torch.randint(0, 2 ** 62, ()).item())
        return _SeededDropoutProjection.apply(x, self.weight, self.dropout_p, seed)


@contextmanager
def hf_weights(model):
    """The model's weights as (name, tensor) pairs named as in a plain transformers checkpoint.

    For a peft model the adapters are folded into the base weights for the duration of the `with` block
    (no copy of the model) and unfolded after it, so a generation engine holding its own copy of the
    weights (vLLM) can be given exactly what the policy computes. The tensors are live views: use them
    inside the block.
    """
    if not is_peft(model):
        yield list(model.state_dict().items())
        return
    model.merge_adapter()
    try:
        yield [(name.removeprefix("base_model.model.").replace(".token_adapter.base_layer.", ".")
                .replace(".base_layer.", "."), tensor)
               for name, tensor in model.state_dict().items()
               if ".lora_" not in name and "trainable_tokens_delta" not in name]
    finally:
        model.unmerge_adapter()


def merged_copy(peft_model):
    """A plain transformers model with the adapters folded into the weights (the peft model is untouched)."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()
