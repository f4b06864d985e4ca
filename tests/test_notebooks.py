"""Notebook hygiene, and every notebook executed end to end, in order, on the smoke profile."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from post.artifacts import RESULTS
from post.files import ROOT

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("0*.ipynb"))


def test_the_study_has_its_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["01_distill", "02_tune", "03_transfer", "04_evaluate", "05_privacy_audit"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    assert tagged[0].cell_type == "code" and tagged[0].source.startswith("profile = ")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.e2e
def test_make_reproduce_runs_every_notebook_in_order_on_smoke():
    """`make reproduce` itself (not just papermill): every notebook, in order, each stage's wall time recorded."""
    walls = RESULTS / "smoke" / "notebooks" / "wall_seconds.txt"
    done = subprocess.run(["make", "-o", ".venv/.post-setup", "reproduce", "PROFILE=smoke", "FORCE=1", f"PY={sys.executable}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [line.split()[0] for line in walls.read_text().splitlines()] == [p.stem for p in NOTEBOOKS]
    assert all((RESULTS / "smoke" / "notebooks" / p.name).exists() for p in NOTEBOOKS)
    assert (RESULTS / "smoke" / "zero_shot.json").exists()
