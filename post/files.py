"""How every file of the study is written and read: atomically, as sorted JSON, and with one-line errors.

A write goes to a temporary sibling that replaces the file only when the write finished, so a crash or a full
disk never leaves half a file under the real name; a file that is there but cannot be read (truncated,
corrupt) raises UnreadableArtifact naming it, and ``readable`` lets a stage treat it as missing and make it
again. Paths recorded in committed files are relative to the repository root (``relative``).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "artifacts" / "cache"  # shared across profiles: converted models, the precision probe

T = TypeVar("T")
# What reading a truncated or corrupt file raises: torch.load (its weights-only unpickler too), json and the
# readers built on them.
UNREADABLE = (OSError, EOFError, ValueError, RuntimeError, KeyError, IndexError, TypeError, pickle.UnpicklingError)


class UnreadableArtifact(ValueError):
    """A file that is there but cannot be read (truncated, corrupt); the message names it."""


def relative(path: str | Path) -> str:
    """``path`` relative to the repository root, for committed files: ``ROOT / relative(p)`` finds it again
    in a moved checkout, and two checkouts never read each other's files. A relative path is taken to be
    relative to the root already; a path outside the repository stays absolute.
    """
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    for candidate in (Path(os.path.abspath(path)), path.resolve()):  # as written (artifacts/ may be a link)
        if candidate.is_relative_to(ROOT):
            return candidate.relative_to(ROOT).as_posix()
    return str(path)


def read_artifact(path: Path, load: Callable[[Path], T]) -> T:
    """``load(path)``; a file that is there but cannot be read raises UnreadableArtifact naming it.

    ``load`` should only read: any ValueError counts as unreadable, so a check such as a prompt's fit to a
    model belongs after it.
    """
    try:
        return load(path)
    except (FileNotFoundError, UnreadableArtifact):
        raise
    except UNREADABLE as err:
        cause = (str(err).strip().splitlines() or [""])[0]
        raise UnreadableArtifact(f"{relative(path)} is unreadable ({type(err).__name__}: {cause})") from err


def readable(path: Path, load: Callable[[Path], T]) -> T | None:
    """A stage's own artifact read by ``load``, or None when it is missing or unreadable: the stage then makes
    it again, overwriting it, instead of stopping on it. An unreadable file gets a one-line warning."""
    if not Path(path).exists():
        return None
    try:
        return read_artifact(path, load)
    except UnreadableArtifact as err:
        print(f"warning: {err}; treating it as missing", file=sys.stderr)
        return None


@contextmanager
def _naming_full_disk(path: Path) -> Iterator[None]:
    """A write that runs out of space says which file it was writing."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err.errno, f"no space left on the device to write {relative(path)}") from err
        raise


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with _naming_full_disk(path):
            yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces the directory ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    tmp.chmod(0o755)
    try:
        with _naming_full_disk(path):
            yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")
    return Path(path)


def read_json(path: Path) -> Any:
    """A JSON file's content; a truncated or corrupt one raises UnreadableArtifact naming it."""
    return read_artifact(path, lambda p: json.loads(Path(p).read_text()))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")
