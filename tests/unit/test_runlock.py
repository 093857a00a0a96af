"""One process per run folder: a second one is refused with one line naming the first; a lock left by a
process that died (SIGKILL: no cleanup) is taken over, and says so."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from srlm.errors import UserError
from srlm.runlock import LOCK_FILE, acquire, locked, release


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    with locked(tmp_path):
        with pytest.raises(UserError) as err:
            acquire(tmp_path)
    assert f"in use by pid {os.getpid()} on this host" in str(err.value)
    assert not (tmp_path / LOCK_FILE).exists()  # released on leaving the block
    release(acquire(tmp_path))


def test_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    path = acquire(tmp_path)
    assert f"taking over the lock of {tmp_path} from pid {dead.pid}" in capsys.readouterr().err
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release(path)


def test_a_half_written_lock_is_stale(tmp_path):
    (tmp_path / LOCK_FILE).write_text('{"pid": 12')
    release(acquire(tmp_path))


def test_another_hosts_lock_is_refused_with_the_file_to_delete(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "today"}))
    with pytest.raises(UserError) as err:
        acquire(tmp_path)
    assert "on host elsewhere" in str(err.value) and str(tmp_path / LOCK_FILE) in str(err.value)


def test_under_a_launcher_only_rank_0_holds_the_run_folder(tmp_path, monkeypatch):
    """Every rank of `torchrun srlm run` runs the same command on one folder: only rank 0 takes the lock."""
    import srlm.pipeline as pipeline
    from srlm.config import load_config

    cfg = load_config(None, [f"run_dir={tmp_path}", "pipelines={a: {stages: []}}"])
    monkeypatch.setattr(pipeline, "_run_all", lambda *a: ["ran"])
    with locked(tmp_path):  # rank 0, say
        with pytest.raises(UserError, match="in use by pid"):
            pipeline.run_all(cfg, progress=False)
        monkeypatch.setenv("RANK", "1")
        assert pipeline.run_all(cfg, progress=False) == ["ran"]

