"""The provider's released source: only what distillation trained, so a long distillation is made once.

A source distilled with ``distill.train_layers`` is the target cut to a few layers with the top ones
retrained; its embeddings, head and lower layers are the target's own. A release stores only the trained
tensors (bf16 safetensors, tens of MB where the whole source is hundreds) next to a manifest: the settings
and their distill hash, tokens, wall time, the command and commit that made it, and the file's SHA-256.
``post distill --release`` (``make source``) writes it to ``sources/<profile>/``, where it is committed once;
the distill stage rebuilds the source from it on the target when its hash is the profile's, and distils
otherwise. Rebuilt or distilled here, the source is the same: distillation ends by rounding what it trained
to bf16.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .artifacts import atomic_dir, read_json, relative, write_json, write_manifest
from .config import ROOT, Config

SOURCES = ROOT / "sources"
FILE = "layers.safetensors"
LIMIT_MB = 60  # a repository keeps every version it was ever given


class ReleaseError(ValueError):
    """A release that cannot be written (too large) or trusted (its file is not the one its manifest names)."""


def release_dir(profile: str) -> Path:
    return SOURCES / profile


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trained_names(student, cfg: Config) -> list[str]:
    """The parameters distillation trains under ``cfg.distill``: what a release has to carry."""
    from .distill import trainable

    ids = {id(p) for p in trainable(student, cfg.distill)}
    names = [name for name, p in student.named_parameters() if id(p) in ids]
    student.requires_grad_(False)
    return names


def write_release(cfg: Config, student, record: dict) -> Path:
    """Write the trained tensors of ``student`` (made by ``cfg``'s distillation) and their manifest."""
    params = dict(student.named_parameters())
    tensors = {name: params[name].detach().to("cpu", torch.bfloat16).contiguous()
               for name in trained_names(student, cfg)}
    size = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    if size > LIMIT_MB:
        raise ReleaseError(f"the trained tensors take {size:.0f} MB, more than a release's {LIMIT_MB} MB: set "
                           "distill.train_layers so that only the top layers learn")
    target = release_dir(cfg.profile)
    with atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / FILE))
        write_json(tmp / "distill.json", record)
        write_manifest(tmp, cfg, distill_hash=record["distill_hash"], student_layers=record["student_layers"],
                       train_layers=cfg.distill.train_layers, tensors=len(tensors), megabytes=round(size, 1),
                       sha256=sha256(tmp / FILE), train_tokens=record["train_tokens"],
                       distill_wall_seconds=record["cost"]["total"]["wall_seconds"],
                       command=f"make source PROFILE={cfg.profile}",
                       written=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    return target


def matches(cfg: Config) -> bool:
    """Whether ``sources/<profile>/`` holds a release made with the profile's distillation settings."""
    from .distill import distill_hash

    manifest = release_dir(cfg.profile) / "manifest.json"
    return manifest.is_file() and read_json(manifest).get("distill_hash") == distill_hash(cfg)


def load_release(cfg: Config, teacher) -> tuple[torch.nn.Module, dict] | None:
    """The source rebuilt from the profile's release on ``teacher``, with its distillation record; None when
    there is no release for these settings. A file that is not the one its manifest names is refused."""
    from .distill import make_student

    if not matches(cfg):
        return None
    directory = release_dir(cfg.profile)
    manifest = read_json(directory / "manifest.json")
    if sha256(directory / FILE) != manifest["sha256"]:
        raise ReleaseError(f"{relative(directory / FILE)} is not the file its manifest names (SHA-256 differs): "
                           "restore it from git, or delete the directory to distil again")
    student = make_student(teacher, manifest["student_layers"])
    tensors = load_file(str(directory / FILE))
    expected = set(trained_names(student, cfg))
    if set(tensors) != expected:
        raise ReleaseError(f"{relative(directory / FILE)} holds {sorted(set(tensors) ^ expected)[:3]}... beyond "
                           "or short of what these settings train")
    params = dict(student.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return student, read_json(directory / "distill.json")
