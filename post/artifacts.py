"""Where stages write, how they write (atomically, with a manifest) and how they find their inputs.

``artifacts/<profile>/`` holds models, prompts and caches (git-ignored); ``results/<profile>/`` holds the
JSON/CSV numbers and ``figures/<profile>/`` the plots. A stage asking for a predecessor's artifact that
does not exist gets an error naming the notebook and make target that produce it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .config import ROOT, Config

ARTIFACTS = ROOT / "artifacts"
RESULTS = ROOT / "results"
FIGURES = ROOT / "figures"
CACHE = ARTIFACTS / "cache"  # shared across profiles: converted models

STAGES = {  # artifact name -> (notebook, make target) that makes it
    "source_model": ("01_distill.ipynb", "make distill"),
    "prompts": ("02_tune.ipynb", "make tune"),
    "transferred": ("03_transfer.ipynb", "make transfer"),
}
METHOD_STAGE = {"compt": "prompts", "fullpt": "prompts", "post": "transferred", "ptfer": "transferred"}
PACKAGES = ("torch", "transformers", "datasets", "opacus", "numpy", "post")


class MissingArtifact(FileNotFoundError):
    """A stage's input has not been produced yet."""


def artifact_dir(profile: str, name: str = "") -> Path:
    return ARTIFACTS / profile / name


def results_dir(profile: str) -> Path:
    path = RESULTS / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(profile: str) -> Path:
    path = FIGURES / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_model_dir(profile: str) -> Path:
    """The distilled source model (a Hugging Face checkpoint directory) of a profile."""
    return artifact_dir(profile, "source_model")


def eps_tag(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def prompt_path(profile: str, task: str, method: str, epsilon: float, seed: int = 0) -> Path:
    """Where a prompt lives: ``artifacts/<profile>/prompts/<task>/<method>_eps<eps>_seed<seed>.pt``.

    Methods: ``compt`` (tuned on the source), ``fullpt`` (tuned on the target), ``post`` and ``ptfer``
    (transferred to the target). Task names may contain "/" (hub tasks); it becomes "__" on disk.
    """
    if method not in METHOD_STAGE:
        raise KeyError(f"unknown prompt method {method!r}; methods: {sorted(METHOD_STAGE)}")
    name = f"{method}_eps{eps_tag(epsilon)}_seed{seed}.pt"
    return artifact_dir(profile, "prompts") / task.replace("/", "__") / name


def require(path: Path, stage: str, profile: str) -> Path:
    """Return ``path`` if it exists, else raise naming the notebook/target that creates ``stage``."""
    if not Path(path).exists():
        notebook, target = STAGES[stage]
        raise MissingArtifact(
            f"{path} is missing: run notebooks/{notebook} first (`{target} PROFILE={profile}` or `make reproduce`)"
        )
    return Path(path)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
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
    return json.loads(Path(path).read_text())


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = platform.python_version()
    return found


def write_manifest(directory: Path, config: Config, **extra: Any) -> Path:
    """Record how an artifact directory was made: config, seed, package versions, git commit."""
    manifest = {"config": config.to_dict(), "seed": config.seed, "versions": versions(),
                "git_commit": git_commit(), "machine": platform.machine(), **extra}
    return write_json(Path(directory) / "manifest.json", manifest)
