"""Thread control: `--threads` / `threads` sets torch's count; more threads than free cores warns in one line."""

from __future__ import annotations

import torch

from srlm import cpu


def test_threads_beyond_the_free_cores_warn_in_one_line(monkeypatch, capsys):
    before = torch.get_num_threads()
    monkeypatch.setattr(cpu, "free_cores", lambda: 1)
    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    try:
        assert cpu.apply_threads(2) == 2 and torch.get_num_threads() == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "2 threads" in err[0] and "--threads 1" in err[0]
        assert cpu.apply_threads(1) == 1
        assert capsys.readouterr().err == ""
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert cpu.apply_threads(None) == 1  # default: the free cores
    finally:
        torch.set_num_threads(before)


def test_free_cores_subtracts_the_load(monkeypatch):
    monkeypatch.setattr(cpu, "usable_cores", lambda: 4)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (2.6, 0, 0))
    assert cpu.free_cores() == 1
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (9.0, 0, 0))
    assert cpu.free_cores() == 1  # never zero
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (0.0, 0, 0))
    assert cpu.free_cores() == 4
