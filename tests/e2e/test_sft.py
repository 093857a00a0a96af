"""SFT end to end on a tiny model: data parallel (2 processes, gloo) equals one process, LoRA trains only
its adapters and the merged model equals the adapter model (kill and resume: test_pipeline_resume.py)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srlm.config import DatasetRef, LoraConfig, SFTConfig
from srlm.tiny import TinySpec, write_tiny_model
from srlm.files import read_metrics

from conftest import TORCHRUN_ENV, TORCHRUN_TEE, torchrun_failure

pytestmark = pytest.mark.e2e

SPEC = TinySpec(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64)


def sft_cfg(**kw) -> SFTConfig:
    base = dict(data=DatasetRef(name="synthetic", split="train", options={"n": 48}), prompt="tags_brief",
                steps=4, batch_size=4, lr=3e-3, warmup_ratio=0.25, max_length=512, seed=3)
    return SFTConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), SPEC)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_same_weights(a: Path, b: Path, atol: float = 0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), (k, (wa[k] - wb[k]).abs().max().item())


# ------------------------------------------------------------------------------------------ distributed

SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    from srlm.config import SFTConfig
    from srlm.train.sft import run_sft
    cfg = SFTConfig.model_validate(json.loads(sys.argv[3]))
    import srlm.train.supervised as supervised
    shard_model = supervised.shard_model
    def recording_shard_model(model, d, requested):  # says whether FSDP really sharded the model
        model = shard_model(model, d, requested)
        if d.main:
            open(sys.argv[2] + "/sharded", "w").write(str(d.sharded))
        return model
    supervised.shard_model = recording_shard_model
    run_sft(cfg, sys.argv[1], sys.argv[2], torch.device("cpu"), progress=False)
    # as `srlm`'s CLI does at the end of a command: leave the process group together (exiting without it,
    # rank 1 once died of SIGABRT in gloo under a load average of ~15, after training had finished)
    from srlm.train.distributed import close_process_group
    close_process_group(True)
    if "RANK" in os.environ:  # under torchrun: no interpreter teardown either (see test_grpo's DDP_SCRIPT)
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)
""")


def run_script(tmp_path, model_dir, out, cfg, nproc, env_extra=None):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **TORCHRUN_ENV, **(env_extra or {})}
    args = [str(script), str(model_dir), str(out), cfg.model_dump_json()]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--standalone", *TORCHRUN_TEE, *args]
    else:
        cmd = [sys.executable, *args]
    # own session: on a timeout the launcher *and* its workers are killed, never left behind
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, torchrun_failure(err) if nproc > 1 else err[-3000:]


def test_two_processes_match_one_process(tmp_path, model_dir):
    """Same global batch (world 2 x accum 1 vs world 1 x accum 2): same losses, same final weights."""
    run_script(tmp_path, model_dir, tmp_path / "one", sft_cfg(grad_accum=2), 1)
    run_script(tmp_path, model_dir, tmp_path / "two", sft_cfg(grad_accum=1), 2)
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["tokens"] == b["tokens"]
    assert one[-1]["loss"] < one[0]["loss"]
    assert_same_weights(tmp_path / "one" / "checkpoint", tmp_path / "two" / "checkpoint", atol=1e-5)


def test_fsdp_two_processes_match_one_process(tmp_path, model_dir):
    """FSDP2 (sharded parameters, reduce-scatter in backward, gathered checkpoints) = one process."""
    run_script(tmp_path, model_dir, tmp_path / "one", sft_cfg(grad_accum=2, save_every=2), 1)
    run_script(tmp_path, model_dir, tmp_path / "fsdp", sft_cfg(grad_accum=1, save_every=2, fsdp=True), 2)
    assert (tmp_path / "fsdp" / "sharded").read_text() == "True"
    one, fsdp = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "fsdp" / "metrics.jsonl")
    for a, b in zip(one, fsdp, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    assert_same_weights(tmp_path / "one" / "checkpoint", tmp_path / "fsdp" / "checkpoint", atol=1e-5)


# ----------------------------------------------------------------------------------------------- LoRA


def test_lora_trains_only_adapters_and_merged_model_matches(tmp_path, model_dir):
    from peft import PeftModel

    from srlm.models import apply_lora, load_model, merged_copy
    from srlm.data.sources import load_stage_records
    from srlm.train.sft import sft_examples
    from srlm.train.supervised import train_supervised

    cfg = sft_cfg(steps=3, lr=1e-2, lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.1))
    model, tok = load_model(model_dir, torch.device("cpu"), "float32")
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    model = apply_lora(model, cfg.lora)
    examples = sft_examples(tok, load_stage_records(cfg.data), cfg.prompt, cfg.loss_on)
    train_supervised(model, tok, examples, cfg, tmp_path / "lora", torch.device("cpu"), progress=False)

    changed_lora = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
            changed_lora += bool(p.abs().sum() > 0) if "lora_B" in name else 0  # B starts at zero
        else:
            assert not p.requires_grad
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base_before[key]), name
    assert changed_lora > 0

    model.eval()
    ids = torch.tensor([tok.encode("<think>12 + 30 = 42</think>\n<answer>42</answer>")])
    with torch.no_grad():
        adapter_logits = model(input_ids=ids).logits
        merged_logits = merged_copy(model)(input_ids=ids).logits
        # what the next stage loads: the merged folder, and the adapter folder on the original base
        saved, _ = load_model(tmp_path / "lora" / "checkpoint", torch.device("cpu"), "float32")
        base, _ = load_model(model_dir, torch.device("cpu"), "float32")
        base_logits = base.eval()(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, tmp_path / "lora" / "checkpoint" / "adapter").eval()
        saved_logits = saved.eval()(input_ids=ids).logits
        reloaded_logits = reloaded(input_ids=ids).logits
    assert not torch.allclose(adapter_logits, base_logits, atol=1e-4)  # it learned
    for other in (merged_logits, saved_logits, reloaded_logits):
        assert torch.allclose(adapter_logits, other, atol=1e-5)
    assert json.loads((tmp_path / "lora" / "checkpoint" / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_packed_sft_trains_like_padded_sft(tmp_path, model_dir):
    """The same micro-batches packed into rows (no padding) or padded give the same losses and weights."""
    from srlm.train.sft import run_sft

    for packing in (False, True):
        run_sft(sft_cfg(packing=packing, max_length=256), model_dir, tmp_path / str(packing), torch.device("cpu"),
                progress=False)
    padded, packed = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("False", "True"))
    assert [m["loss"] for m in packed] == pytest.approx([m["loss"] for m in padded], rel=1e-4)
    assert [m["tokens"] for m in packed] == [m["tokens"] for m in padded]
    assert_same_weights(tmp_path / "False" / "checkpoint", tmp_path / "True" / "checkpoint", atol=1e-4)


def test_lora_with_trainable_tokens_changes_only_those_rows(tmp_path, model_dir):
    """`lora.trainable_tokens`: the tags' embedding rows (tied to the output) train with the adapters; every
    other row stays; the merged checkpoint equals the adapter model."""
    from srlm.models import load_model
    from srlm.train.sft import run_sft

    tags = ["<think>", "</think>", "<answer>", "</answer>"]
    cfg = sft_cfg(steps=3, lr=1e-2, lora=LoraConfig(enabled=True, r=4, alpha=8, trainable_tokens=tags))
    run_sft(cfg, model_dir, tmp_path / "tt", torch.device("cpu"), progress=False)
    before, after = weights(model_dir), weights(tmp_path / "tt" / "checkpoint")
    _, tok = load_model(model_dir, torch.device("cpu"), "float32")
    tag_ids = tok.convert_tokens_to_ids(tags)
    changed_rows = (before["model.embed_tokens.weight"] != after["model.embed_tokens.weight"]).any(dim=1)
    assert set(changed_rows.nonzero().flatten().tolist()) == set(tag_ids)

    with pytest.raises(Exception, match="not single tokens"):
        run_sft(sft_cfg(steps=1, lora=LoraConfig(enabled=True, trainable_tokens=["<nope>"])), model_dir,
                tmp_path / "bad", torch.device("cpu"), progress=False)


@pytest.mark.parametrize("packing", [False, True])
def test_micro_batch_tokens_split_batches_with_the_same_gradients(tmp_path, model_dir, monkeypatch, packing):
    """`micro_batch_tokens` small enough to cut every batch of 4 into several forward/backward passes:
    the same losses and weights as whole batches (each piece divides by the step's loss-token count)."""
    import srlm.train.supervised as supervised
    from srlm.train.sft import run_sft

    passes = {}
    real_collate = supervised.collate

    def counting_collate(examples, *args):
        passes[tag] = passes.get(tag, 0) + 1
        return real_collate(examples, *args)

    monkeypatch.setattr(supervised, "collate", counting_collate)
    for tag, budget in (("whole", None), ("split", 60)):
        run_sft(sft_cfg(micro_batch_tokens=budget, packing=packing, max_length=256), model_dir, tmp_path / tag,
                torch.device("cpu"), progress=False)
    assert passes["whole"] == 4 and passes["split"] >= 8  # 4 steps of one batch each; the budget cut them
    whole, split = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("whole", "split"))
    assert [m["loss"] for m in split] == pytest.approx([m["loss"] for m in whole], rel=1e-5)
    assert_same_weights(tmp_path / "whole" / "checkpoint", tmp_path / "split" / "checkpoint", atol=1e-5)
