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
        # the settings it ran with, the variant applied
        assert run["transfer_lr"] == 0.001 and run["transfer_anchor"] == 0.0 and run["transfer_anchor_on"] == "all"
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


def test_a_shorter_patience_stops_and_keeps_where_tune_prompt_would(bench):
    from tune_patience import stop_and_keep  # bench/ is on the path while ``bench`` is in use

    steps, scores = [0, 50, 100, 150, 200, 250], [0.5, 0.6, 0.59, 0.58, 0.62, 0.61]
    assert stop_and_keep(steps, scores, 2) == (150, 50)  # two evaluations without a better one
    assert stop_and_keep(steps, scores, 3) == (250, 200)  # runs to the end of the curve, keeps its best
    assert stop_and_keep(steps, [0.5, 0.5, 0.5], 1) == (50, 0)  # a tie is no improvement; the first best is kept


def test_tune_patience_replays_the_shorter_patiences_and_starts_afresh_for_others(bench, tmp_path):
    out = tmp_path / "patience.json"
    args = ("--profile", "smoke", "--method", "fullpt", "--seeds", "0", "1", "--out", str(out))
    read = bench("tune_patience", *args, "--patiences", "1", "3")
    result = json.loads(out.read_text())
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    for seed in result["seeds"]:
        runs = {r["patience"]: r for r in seed["runs"]}
        assert sorted(runs) == [1, 3]
        assert runs[1]["stopped_step"] <= runs[3]["stopped_step"]
        for run in runs.values():
            assert run["kept_step"] <= run["stopped_step"]
            curve = dict(zip(seed["curve"]["step"], seed["curve"]["accuracy"]))
            assert run["selection_accuracy"] == curve[run["kept_step"]]
    assert [s["patience"] for s in result["summary"]] == [1, 3]
    assert {split for _, split in read} == {"train", "validation"}

    bench("tune_patience", *args, "--patiences", "1", "3")  # resumed: every seed is done, nothing retuned
    assert json.loads(out.read_text())["seeds"] == result["seeds"]
    bench("tune_patience", *args, "--patiences", "2")  # other patiences: the old seeds' stops do not answer them
    assert [r["patience"] for s in json.loads(out.read_text())["seeds"] for r in s["runs"]] == [2, 2]



@pytest.fixture
def tiny_source(bench, tiny):  # after bench, which moves artifacts/ under tmp
    """The smoke profile's source model: the tiny model stands in for it."""
    model, tok = tiny
    source = artifacts.source_model_dir("smoke")
    model.save_pretrained(source)
    tok.save_pretrained(source)
    return source


def test_dp_repeats_resumes_and_starts_afresh_when_the_source_changes(bench, tiny_source, tmp_path):
    source = tiny_source
    (source / "distill.json").write_text('{"distill_hash": "tiny"}')
    published = {"task": "rotten_tomatoes", "method": "CompPT", "epsilon": "8", "accuracy": 0.5}
    (artifacts.results_dir("smoke") / "tune.json").write_text(json.dumps([published]))
    out = tmp_path / "repeats.json"
    args = ("--profile", "smoke", "--task", "rotten_tomatoes", "--epsilons", "8", "--out", str(out))
    bench("dp_repeats", *args, "--repeats", "2")
    result = json.loads(out.read_text())
    assert [(r["epsilon"], r["repeat"], r["randomness"]) for r in result["runs"]] == [("8", 0, "secret"),
                                                                                      ("8", 1, "secret")]
    assert result["summary"][0]["repeats"] == 2 and result["summary"][0]["published"] == 0.5

    bench("dp_repeats", *args, "--repeats", "2")  # resumed: both repeats are done, nothing is tuned again
    assert json.loads(out.read_text())["runs"] == result["runs"]
    (source / "distill.json").write_text('{"distill_hash": "another"}')  # another source: old repeats do not count
    bench("dp_repeats", *args, "--repeats", "1")
    again = json.loads(out.read_text())
    assert [r["repeat"] for r in again["runs"]] == [0] and again["runs"][0]["run_key"] != result["runs"][0]["run_key"]


NO_PROFILE = {"dp_step", "forward_throughput"}  # they time one model, named by --model


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "common"))
def test_every_bench_script_imports_what_it_uses_and_explains_itself(bench, name, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench(name, "--help")
    assert stopped.value.code == 0
    assert name in NO_PROFILE or "--profile" in capsys.readouterr().out


def test_stage_profile_times_every_kind_of_stage_work_against_the_peak(bench, tiny_source, tmp_path):
    out = tmp_path / "profile.json"
    bench("stage_profile", "--profile", "smoke", "--task", "rotten_tomatoes", "--steps", "2", "--test", "16",
          "--pool", "16", "--canaries", "16", "--peak-size", "128", "--peak-repeats", "2", "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result["kinds"]) == {"compt_step", "dp_step", "fullpt_step", "transfer_prepare", "transfer_step",
                                    "validation_eval", "test_scoring", "lira_shadow", "canary_step"}
    for name, kind in result["kinds"].items():
        assert kind["wall_seconds"] > 0 and kind["flops"] > 0, name
        assert 0 < kind["fraction_of_peak"] < 10 and 0 <= kind["padding_share"] < 1, name
    for name in ("compt_step", "dp_step", "fullpt_step", "transfer_step", "lira_shadow"):
        assert result["kinds"][name]["per_step"]["gflops_per_s"] > 0, name
    assert result["precisions"]["tune"] in ("fp32", "bf16") and result["machine"]["threads"] >= 1


def test_length_groups_compute_the_whole_batch_s_losses_and_gradients(bench, tiny_source, tmp_path):
    out = tmp_path / "groups.json"
    bench("length_groups", "--profile", "smoke", "--batch", "8", "--per-example", "--repeats", "1", "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result["median_seconds"]) == {"1", "2", "4"} and 0 <= result["padding_share"] < 1
    for groups, differs in result["largest_difference"].items():
        assert differs["loss"] < 1e-4 and differs["gradient_relative"] < 1e-4, groups
