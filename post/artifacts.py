"""Where stages write, what a manifest records, and how a stage finds its inputs.

``artifacts/<profile>/`` holds models, prompts and caches (git-ignored); ``results/<profile>/`` holds the
JSON/CSV numbers and ``figures/<profile>/`` the plots. A stage asking for a predecessor's artifact that
does not exist, or cannot be read, gets an error naming the file and the notebook and make target that
produce it; a stage's own unreadable artifact (truncated by a crash or a full disk) counts as missing, so the
stage simply makes it again.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, TypeVar

from .config import Config, check_profile_name, eps_tag
from .files import ROOT, UnreadableArtifact, read_artifact, relative, write_json

ARTIFACTS = ROOT / "artifacts"
RESULTS = ROOT / "results"
FIGURES = ROOT / "figures"

STAGES = {  # artifact name -> (notebook, make target, post command) that makes it
    "source_model": ("01_distill.ipynb", "make distill", "post distill"),
    "prompts": ("02_tune.ipynb", "make tune", "post tune"),
    "transferred": ("03_transfer.ipynb", "make transfer", "post transfer"),
}
PACKAGES = ("torch", "transformers", "datasets", "opacus", "numpy", "post")


@dataclass(frozen=True)
class Method:
    """One method of the study: the one place that says what it is called, which prompt it scores and where."""

    key: str  # in code, in a prompt's meta and in 03's rows
    label: str  # in results rows, tables and figures
    prompt: str | None  # the prompt file it scores (its method in ``prompt_path``); None: no prompt
    stage: str | None  # the STAGES artifact that prompt file belongs to
    model: str  # the model it is scored on: "source" or "target"


METHODS = {m.key: m for m in (  # in the order of the tables' columns
    Method("zs", "ZS", None, None, "target"),
    Method("fullpt", "FullPT", "fullpt", "prompts", "target"),
    Method("compt", "CompPT", "compt", "prompts", "source"),
    Method("direct", "Direct", "compt", "prompts", "target"),  # the CompPT prompt pasted onto the target unchanged
    Method("ptfer", "PTfer", "ptfer", "transferred", "target"),
    Method("post", "POST", "post", "transferred", "target"),
)}


class MissingArtifact(FileNotFoundError):
    """A stage's input has not been produced yet, or cannot be read."""


T = TypeVar("T")


def artifact_dir(profile: str, name: str = "") -> Path:
    """``artifacts/<profile>/<name>``; a profile that is not a plain name of params/ is refused (ConfigError), so
    no path built from it leaves the profile's folders."""
    return ARTIFACTS / check_profile_name(profile) / name


def results_dir(profile: str) -> Path:
    path = RESULTS / check_profile_name(profile)
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(profile: str) -> Path:
    path = FIGURES / check_profile_name(profile)
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_model_dir(profile: str) -> Path:
    """The distilled source model (a Hugging Face checkpoint directory) of a profile."""
    return artifact_dir(profile, "source_model")


def weights_whole(directory: Path) -> bool:
    """Whether a checkpoint directory's safetensors files are all there and whole (each covers what its header
    names; a file cut short by a crash or a full disk does not)."""
    from safetensors import SafetensorError, safe_open

    files = sorted(Path(directory).glob("*.safetensors"))
    try:
        for path in files:
            with safe_open(str(path), "pt"):
                pass
    except (OSError, SafetensorError):
        return False
    return bool(files)


def source_model(profile: str) -> Path:
    """The source model's directory for a stage that loads it: missing, or with its weights cut short, an error
    names the file and the make target that makes it again (which remakes it: see ``post.distill.existing``)."""
    directory = require(source_model_dir(profile), "source_model", profile)
    if not weights_whole(directory):
        raise MissingArtifact(f"{relative(directory)}/model.safetensors is missing or truncated: "
                              f"{_rerun('source_model', profile)} again")
    return directory


def prompt_path(profile: str, task: str, method: str, epsilon: float, seed: int = 0) -> Path:
    """Where the prompt a method scores lives: ``artifacts/<profile>/prompts/<task>/<file>_eps<eps>_seed<seed>.pt``.

    Files: ``compt`` (tuned on the source; Direct scores it too), ``fullpt`` (tuned on the target), ``post`` and
    ``ptfer`` (transferred to the target). Task names may contain "/" (hub tasks); it becomes "__" on disk.
    """
    file = METHODS[method].prompt if method in METHODS else None
    if file is None:
        scored = sorted(key for key, m in METHODS.items() if m.prompt)
        raise KeyError(f"unknown prompt method {method!r}; methods: {scored}")
    name = f"{file}_eps{eps_tag(epsilon)}_seed{seed}.pt"
    return artifact_dir(profile, "prompts") / task.replace("/", "__") / name


def _rerun(stage: str, profile: str) -> str:
    notebook, target, command = STAGES[stage]
    return (f"run `{command} --profile {profile}`, or notebooks/{notebook} (`{target} PROFILE={profile}`, or "
            f"`make reproduce PROFILE={profile}`)")


def require(path: Path, stage: str, profile: str) -> Path:
    """Return ``path`` if it exists, else raise naming the notebook/target that creates ``stage``."""
    if not Path(path).exists():
        raise MissingArtifact(f"{relative(path)} is missing: {_rerun(stage, profile)} first")
    return Path(path)


def read_required(path: Path, stage: str, profile: str, load: Callable[[Path], T]) -> T:
    """A predecessor's artifact read by ``load``; missing or unreadable, an error naming the file and the stage
    that makes it (which treats an unreadable file as missing)."""
    try:
        return read_artifact(require(path, stage, profile), load)
    except UnreadableArtifact as err:
        raise MissingArtifact(f"{err}: {_rerun(stage, profile)} again") from err


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
