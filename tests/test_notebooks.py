"""Notebook hygiene, and every notebook executed end to end, in order, on the smoke profile."""

from pathlib import Path

import nbformat
import papermill
import pytest

from post.artifacts import RESULTS

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("0*.ipynb"))


def test_the_study_has_its_notebooks():
    assert [p.name for p in NOTEBOOKS][:1] and all(p.name[:2].isdigit() for p in NOTEBOOKS)


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


def test_notebooks_run_end_to_end_on_smoke(tmp_path):
    for path in NOTEBOOKS:
        papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters={"profile": "smoke"},
                                   cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False)
    assert (RESULTS / "smoke" / "zero_shot.json").exists()
