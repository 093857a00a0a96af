"""Writes that matter, made atomic, and the reader of a stage's metrics.jsonl. No torch: evaluation,
reporting and the pipeline use these without importing the trainer.

A file is written beside its target and renamed over it (`atomic_write_text`, `atomic_write_json`); a folder
is swapped in by renames (`replace_folder`), so a kill at any moment leaves the old or the new, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a full disk, a read-only target: leave the old file, and no half-written one beside it
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def replace_folder(tmp: Path, folder: Path) -> None:
    """Put the complete folder `tmp` in place of `folder` by renames. A kill at any moment leaves either
    the old folder, or the new one, or (between the two renames) none: never a mix of the two."""
    tmp, folder = Path(tmp), Path(folder)
    if not folder.exists():
        tmp.rename(folder)
        return
    old = folder.with_name(folder.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old)


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
