"""Which processes get glibc's fixed mmap threshold (srlm.memory): real-sized models only."""

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
