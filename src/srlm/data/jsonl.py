"""Reading JSON Lines files that users hand us: one object per line, every fault named by file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from srlm.errors import UserError


def json_objects(path: Path, errors: str = "strict") -> Iterator[tuple[dict, str]]:
    """(object, "file:line") for every non-blank line; a bad line is a `UserError` naming it.

    `errors="replace"` turns undecodable bytes into U+FFFD (a stray byte in a model's output should not
    make a file of generations unreadable); datasets stay strict so a wrong encoding is reported.
    """
    with Path(path).open(encoding="utf-8", errors=errors) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: malformed JSON line ({e.msg} at column {e.colno})") from None
            if not isinstance(data, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(data).__name__}")
            yield data, where
