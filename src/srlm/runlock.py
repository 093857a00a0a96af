"""One process at a time per run folder (or evaluation folder): a lock file naming its holder.

Two `srlm run` on one folder would run every stage twice and append duplicate samples. The lock is a file
created exclusively (`O_EXCL`) holding the pid, host and start time of its process. A second process
exits with one line naming the first. A lock whose process is gone (killed: no cleanup ran) is stale: the
next process takes it over and says so. A holder on another host cannot be checked: the message says
which file to delete if that process is gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from srlm.errors import UserError

LOCK_FILE = ".srlm.lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a reused pid is not mistaken for the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process with that pid
    now = _process_start(pid)
    return start is None or now is None or now == start


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv[:3])}


def acquire(folder: Path) -> Path:
    """Take `folder`'s lock (creating the folder) or raise UserError naming its holder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise UserError(f"{folder}: cannot create the folder (permission denied)") from None
    except (FileExistsError, NotADirectoryError):  # the folder, or a folder above it, is a file
        file = next(p for p in (folder, *folder.parents) if p.exists() and not p.is_dir())
        raise UserError(f"{folder}: cannot create the folder: {file} is a file; choose another folder") from None
    path = folder / LOCK_FILE
    for _ in range(3):  # a lost race with another taker just goes round again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue
            if holder.get("host") != socket.gethostname():
                raise UserError(f"{folder} is in use by pid {holder.get('pid')} on host {holder.get('host')} "
                                f"(since {holder.get('since')}); if that process is gone, delete {path}")
            if _alive(int(holder.get("pid", -1)), holder.get("process_start")):
                raise UserError(f"{folder} is in use by pid {holder['pid']} on this host ({holder.get('command')}, "
                                f"since {holder.get('since')}); wait for it to finish or stop it")
            print(f"srlm: taking over the lock of {folder} from pid {holder.get('pid')}, which is no longer "
                  f"running", file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
            continue
        except PermissionError:
            raise UserError(f"{folder}: read-only (cannot write {path.name} there)") from None
        with os.fdopen(fd, "w") as f:
            json.dump(_me(), f)
        return path
    raise UserError(f"{folder}: could not take its lock {path}")


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None  # released meanwhile
    except (OSError, ValueError):
        return {"host": socket.gethostname(), "pid": -1}  # half-written by a killed process: stale


def release(path: Path) -> None:
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextmanager
def locked(folder: Path):
    """Hold `folder`'s lock for the `with` block."""
    path = acquire(folder)
    try:
        yield path
    finally:
        release(path)
