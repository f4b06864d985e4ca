"""Skip what is done: every stage keeps each finished piece of its work under the key of what made it.

A piece lives under a name that carries the key of its inputs (``keyed_path``) or at a fixed name with its key
stamped inside; a rerun whose key matches reads it back, a changed input gives another key and the piece is
made anew, and a piece that cannot be read (a crash mid-write, a full disk) is made again instead of stopping the
stage. ``reuse`` is that rule, once, for every stage and bench.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from .files import readable, write_json

T = TypeVar("T")


def content_key(payload: Any) -> str:
    """Sixteen hex digits of a digest of ``payload`` (JSON, keys sorted): every stage's skip-if-done key.

    Any changed input gives another key, so the piece it names is made anew.
    """
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def keyed_path(folder: Path, part: str, suffix: str, payload: Any) -> Path:
    """Where a stage keeps a finished part of its work: ``<folder>/<part>_<key><suffix>``, the key being
    ``content_key(payload)`` of everything that determines the part; a changed setting names another file."""
    return Path(folder) / f"{part}_{content_key(payload)}{suffix}"


def reuse(path: Path, load: Callable[[Path], T | None], make: Callable[[], T],
          save: Callable[[T, Path], Any]) -> T:
    """What ``path`` holds, read by ``load``; else ``make()``, saved by ``save(value, path)`` before it is returned.

    ``load`` returns None for a file that other inputs made (its stamped key differs): that file is made again,
    as a missing or unreadable one is (with a one-line warning for the unreadable).
    """
    found = readable(path, load)
    if found is None:
        found = make()
        save(found, path)
    return found


def save_json(value: Any, path: Path) -> None:
    """``reuse``'s ``save`` for a JSON piece."""
    write_json(path, value)
