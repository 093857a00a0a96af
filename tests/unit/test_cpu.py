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
    monkeypatch.setattr(cpu, "busy_cores_now", lambda: None)  # no counters: the load average alone
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (2.6, 0, 0))
    assert cpu.free_cores() == 1
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (9.0, 0, 0))
    assert cpu.free_cores() == 1  # never zero
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (0.0, 0, 0))
    assert cpu.free_cores() == 4


def test_cores_idle_now_count_as_free_though_the_load_average_still_counts_a_finished_job(monkeypatch):
    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (1.9, 0, 0))  # a benchmark that ended seconds ago
    monkeypatch.setattr(cpu, "busy_cores_now", lambda: 0.1)
    assert cpu.free_cores() == 2
    monkeypatch.setattr(cpu, "busy_cores_now", lambda: 1.2)  # another process busy now as well
    assert cpu.free_cores() == 1
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (0.2, 0, 0))  # busy only now: the load has not caught up
    assert cpu.free_cores() == 2


def test_busy_cores_now_reads_the_kernels_counters(monkeypatch):
    """Two readings of /proc/stat's first line: busy time over total time, times the CPUs."""
    readings = iter(["cpu  100 0 100 700 100 0 0 0 0 0\n", "cpu  250 0 150 800 100 0 0 0 0 0\n"])

    class Stat:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def readline(self):
            return next(readings)

    monkeypatch.setattr("builtins.open", lambda *a, **k: Stat())
    monkeypatch.setattr(cpu.time, "sleep", lambda s: None)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    assert cpu.busy_cores_now() == 2 * 200 / 300  # busy 400 -> 600, total 1000 -> 1300
