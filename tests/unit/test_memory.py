"""srlm.memory: the fixed mmap threshold (real-sized models only), the memory estimates, the measured peak."""

import pytest
import torch

import srlm.memory as memory


def test_freed_memory_setting_only_for_real_sized_models(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "return_freed_memory", lambda: calls.append(1))
    memory.return_freed_memory_for(torch.nn.Linear(64, 64))  # the tiny models: page faults cost more
    assert calls == []
    big = torch.nn.Linear(8000, 7000, device="meta")  # 56M parameters, no memory
    memory.return_freed_memory_for(big)
    assert calls == [1]


def test_the_setting_bounds_onednns_primitive_cache_unless_the_user_set_it(monkeypatch):
    """oneDNN compiles a primitive per operand shape; decoding makes a new attention width every step."""
    mallopt = []
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: type("Libc", (), {"mallopt": lambda *a: mallopt.append(a)}))
    for preset, want in ((None, str(memory.ONEDNN_PRIMITIVES)), ("512", "512")):
        monkeypatch.setattr(memory, "_configured", False)
        if preset is None:
            monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", preset)
        memory.return_freed_memory()
        assert memory.os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == want


def test_an_engine_that_loads_a_real_sized_model_returns_freed_memory(monkeypatch):
    """`srlm eval` builds its engine from a model path: decoding a real-sized model gets the setting too."""
    import srlm.models as models
    from srlm.engines import EngineOptions, build_engine

    seen = []
    big = torch.nn.Linear(8000, 7000, device="meta")
    monkeypatch.setattr(memory, "return_freed_memory", lambda: seen.append("set"))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: (big, type("Tok", (), {"pad_token_id": 0})()))
    build_engine("hf", EngineOptions(model="anything", device="cpu"))
    assert seen == ["set"]


def test_eval_estimate_counts_the_kv_cache_the_lean_forward_allocates():
    from srlm.engines.lean import LeanForward, lean_copy_bytes
    from srlm.memory import eval_estimate
    from srlm.tiny import TinySpec, build_model

    model = build_model(TinySpec(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, max_positions=256),
                        300, 0, 1).eval()
    lean = LeanForward(model)
    cache = lean.new_cache(reserve=24)
    ids = torch.randint(2, 300, (5, 40))  # [B, S]
    lean(ids, torch.ones_like(ids), torch.arange(40)[None].expand(5, -1), cache)
    allocated = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer._k, layer._v))
    parts = eval_estimate(model, rows=5, columns=40 + 24)
    assert parts["KV cache"] * 1024 ** 3 == allocated
    fused = sum(p.numel() for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "k_proj.weight",
               "v_proj.weight", "gate_proj.weight", "up_proj.weight")) or n == "lm_head.weight")
    assert lean_copy_bytes(model) >= 4 * fused
    # half precision: the fused copies and the output layer (norm folded) only; o and down are read in place
    head = model.lm_head.weight.numel() if "lm_head.weight" not in dict(model.named_parameters()) else 0
    assert lean_copy_bytes(model.to(torch.bfloat16)) == 2 * (fused + head)


def test_a_real_sized_model_decodes_from_its_own_weights(monkeypatch):
    """At `IN_PLACE_MIN_PARAMS` parameters, on a CPU, the lean forward copies no weight, and the estimate
    counts none; decoding it in another dtype still copies every weight into that dtype."""
    from srlm.engines import lean as lean_module
    from srlm.tiny import TinySpec, build_model

    model = build_model(TinySpec(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, max_positions=256),
                        300, 0, 1).eval()
    params = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(lean_module, "IN_PLACE_MIN_PARAMS", params)
    lean = lean_module.LeanForward(model)
    assert lean.in_place and lean_module.lean_copy_bytes(model) == 0
    assert lean.layers[0]["gate"].weight.data_ptr() == model.model.layers[0].mlp.gate_proj.weight.data_ptr()
    assert not lean_module.LeanForward(model, torch.bfloat16).in_place
    assert lean_module.lean_copy_bytes(model, torch.bfloat16) > 2 * params - 2 * 300 * 64  # all but the norms
    monkeypatch.setattr(lean_module, "IN_PLACE_MIN_PARAMS", params + 1)
    assert not lean_module.decodes_in_place(model)
    monkeypatch.setattr(lean_module, "IN_PLACE_MIN_PARAMS", params)
    assert not lean_module.decodes_in_place(model.to("meta"))  # off a CPU the fused copies stay


def test_activation_estimate_per_token_by_precision_and_checkpointing():
    """SmolLM2-135M's shape, by hand: 30 layers x (7 x 576 + 3 x 1536) fp32 numbers per token; under bf16
    autocast 2 x 576 of them stay 4 bytes and the rest are 2; checkpointing keeps 576 fp32 numbers a layer."""
    model = type("M", (), {"config": type("C", (), {"num_hidden_layers": 30, "hidden_size": 576,
                                                    "intermediate_size": 1536})()})()
    assert memory.activation_bytes_per_token(model) == 30 * (7 * 576 + 3 * 1536) * 4 == 1_036_800
    assert memory.activation_bytes_per_token(model, low_precision=True) == 30 * (2 * 576 * 4 + (5 * 576 + 3 * 1536) * 2)
    assert memory.activation_bytes_per_token(model, checkpointing=True) == 30 * 576 * 4
    cpu = torch.device("cpu")
    fp32, bf16 = (memory.micro_batch_token_budget(model, cpu, low_precision=x) for x in (False, True))
    assert fp32 == memory.CPU_ACTIVATION_BUDGET // 1_036_800 == 1035 and bf16 == (1 << 30) // 587_520 == 1827
    model.parameters = lambda: iter([torch.nn.Parameter(torch.zeros(10))])
    parts = memory.training_estimate(model, 1000, low_precision=True)
    assert parts["activations"] == 1000 * 587_520 / 1024 ** 3 and parts["weights"] == 40 / 1024 ** 3
    reference = torch.nn.Linear(4, 4, bias=False).to(torch.bfloat16)  # GRPO's frozen reference, in its dtype
    assert memory.training_estimate(model, 1000, reference)["weights"] == (40 + 32) / 1024 ** 3


_PEAK_PROBE = """
import torch
import srlm.memory as memory
cpu = torch.device("cpu")
big = torch.ones(80_000_000)  # 0.3 GiB, every page touched; a fresh mapping, unmapped when freed
del big
earlier = memory.peak_memory_gb(cpu)
memory.reset_peak_memory(cpu)
small = torch.ones(10_000_000)  # 0.04 GiB
print(earlier, memory.peak_memory_gb(cpu))
"""


def test_a_stages_peak_is_its_own_not_the_largest_of_the_stages_before_it():
    """`srlm run` runs its stages in one process and `ru_maxrss` only grows: a stage after a big one would
    record the big one's peak. `reset_peak_memory` starts a new peak (Linux: VmHWM). In a fresh process:
    in this one, the big tensor may reuse memory the heap already holds and never raise the peak."""
    import subprocess
    import sys

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("this system cannot reset a process's peak RSS (/proc/self/clear_refs)")
    out = subprocess.run([sys.executable, "-c", _PEAK_PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    earlier_peak, own_peak = map(float, out.stdout.split())
    assert own_peak < earlier_peak - 0.2
    assert own_peak > 0
