"""The lever studies under bench/ run, resume and keep to validation data, on the smoke profile's tiny model.

Their numbers are measured on the cpu profile and committed as JSON; these tests check the machinery that made
them: a sweep that crashes on a new flag, or quietly reads a test split, would otherwise be found only hours
into a real run.
"""

import json
import runpy
import sys
from pathlib import Path

import pytest

from post import artifacts, tasks

pytestmark = [pytest.mark.stage, pytest.mark.usefixtures("one_thread")]
BENCH = Path(__file__).parents[1] / "bench"


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """Run a bench script as ``python bench/<name>.py *args`` would, with artifacts and figures in ``tmp_path``;
    returns the splits it read, as (task, split) pairs."""
    for name in ("ARTIFACTS", "RESULTS", "FIGURES"):
        monkeypatch.setattr(artifacts, name, tmp_path / name.lower())
    monkeypatch.syspath_prepend(str(BENCH))
    read = set()

    class Recorded(dict):
        def __init__(self, task, splits):
            super().__init__(splits)
            self.task = task

        def __getitem__(self, split):
            read.add((self.task, split))
            return super().__getitem__(split)

    splits = tasks._splits
    monkeypatch.setattr(tasks, "_splits", lambda task: Recorded(task, splits(task)))

    def run(name: str, *args: str) -> set:
        monkeypatch.setattr(sys, "argv", [name, *args])
        runpy.run_path(str(BENCH / f"{name}.py"), run_name="__main__")
        return read

    return run


def test_source_sweep_maps_resumes_and_never_reads_a_test_split(bench, tmp_path):
    out = tmp_path / "sweep.json"
    args = ("--profile", "smoke", "--shapes", "1+1", "--modes", "undistilled", "readout", "--steps", "2",
            "--validation", "16", "--readout-examples", "24", "--readout-epochs", "1", "--transfer-steps", "2",
            "--transfer-eval-every", "1", "--owner-seeds", "0", "1", "--lever-point", "1+1-readout",
            "--levers", "lr=0.001", "--out", str(out))
    read = bench("source_sweep", *args)
    result = json.loads(out.read_text())
    points = {(p["mode"], p["owner_seed"]) for p in result["points"]}
    assert points == {(mode, seed) for mode in ("undistilled", "readout") for seed in (0, 1)}
    for point in result["points"]:
        assert 0 <= point["compt"] <= 1 and 0 <= point["post"] <= 1 and point["step_ratio"] > 0
        assert point["layers"] == 2 and point["post_last_step"] == 2
    readout = [p for p in result["points"] if p["mode"] == "readout"]
    assert all(p["distill_tokens"] > 0 for p in readout)
    assert [(r["variant"], r["owner_seed"]) for r in result["levers"]["runs"]] == [("lr=0.001", 0), ("lr=0.001", 1)]
    # a lever run starts from the same owner prompt as the map point on that source and seed
    for run in result["levers"]["runs"]:
        point = next(p for p in readout if p["owner_seed"] == run["owner_seed"])
        assert (run["compt"], run["direct"]) == (point["compt"], point["direct"])
    assert (tmp_path / "figures" / "smoke" / "sweep.png").exists()
    assert {split for _, split in read} == {"train", "validation"}

    # a second run with the same arguments has nothing left to do: no point, lever or owner prompt is made again
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "artifacts").rglob("owner_prompts/*.pt")}
    assert len(kept) == 4  # two sources x two owner seeds
    bench("source_sweep", *args)
    again = json.loads(out.read_text())
    assert (again["points"], again["levers"]) == (result["points"], result["levers"])
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def test_source_sweep_refuses_a_misspelt_mode_before_loading_anything(bench, tmp_path):
    with pytest.raises(SystemExit, match="neither TEXTSxEPOCHS"):
        bench("source_sweep", "--profile", "smoke", "--modes", "readout:lots", "--out", str(tmp_path / "x.json"))
    assert not (tmp_path / "artifacts").exists()
