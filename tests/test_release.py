"""The provider's release: the trained layers only, rebuilt into the very source that was distilled."""

import copy

import pytest
import torch

import post.artifacts
import post.distill as distill
import post.files
import post.release as release
from post.config import load_config
from post.models import load_model

SETTINGS = {"objective": "readout", "readout_examples": 24, "readout_holdout": 8, "epochs": 1, "batch_size": 4,
            "lr": 3e-3, "precision": "fp32", "num_student_layers": 3, "train_layers": 1, "eval_every": 6}


def smoke(**overrides):
    return load_config("smoke", {"distill": {**SETTINGS, **overrides}})


def source_state(profile: str) -> dict:
    return load_model(str(post.artifacts.source_model_dir(profile))).state_dict()


@pytest.mark.stage
def test_a_release_carries_only_the_trained_layers_and_rebuilds_the_same_source(workspace, monkeypatch):
    cfg = smoke()
    record = distill.run_distill(cfg, progress=False, release=True)
    made = source_state(cfg.profile)
    manifest = post.files.read_json(release.release_dir(cfg.profile) / "manifest.json")
    assert manifest["distill_hash"] == record["distill_hash"] and manifest["train_layers"] == 1
    assert manifest["sha256"][release.FILE] == release.sha256(release.release_dir(cfg.profile) / release.FILE)
    tensors = release.load_file(str(release.release_dir(cfg.profile) / release.FILE))
    assert sum(t.numel() for t in tensors.values()) == record["trainable_params"]  # the top layer and final norm
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())

    # another machine: no source model, no distillation, only the committed release
    post.artifacts.source_model_dir(cfg.profile).joinpath("manifest.json").unlink()
    monkeypatch.setattr(distill, "distill_student", lambda *a, **k: pytest.fail("distilled again"))
    assert distill.run_distill(cfg, progress=False) == record
    rebuilt = source_state(cfg.profile)
    assert rebuilt.keys() == made.keys() and all(torch.equal(rebuilt[k], made[k]) for k in made)
    source_manifest = post.artifacts.source_model_dir(cfg.profile) / "manifest.json"
    assert post.files.read_json(source_manifest)["rebuilt_from"].endswith("sources/smoke")

    # "auto" precision counts as what it meant where the release was made (here fp32), on any machine
    assert release.release_hash(smoke(precision="auto")) == record["distill_hash"]


def test_a_release_for_other_settings_is_not_used_and_a_tampered_one_is_refused(workspace):
    cfg = smoke()
    teacher = load_model(cfg.model)
    student, record = distill.distill_student(cfg, teacher, post.models.load_tokenizer(cfg.model),
                                              workspace / "work", progress=False)
    release.write_release(cfg, student, record)
    assert release.load_release(smoke(lr=1e-3), teacher) is None  # another source: distil it
    rebuilt, _ = release.load_release(cfg, teacher)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), student.state_dict().values()))
    other = copy.deepcopy(teacher)  # another target underneath: the lower layers differ
    with torch.no_grad():
        next(distill.layer_list(other)[1][0].parameters()).add_(1.0)
    with pytest.raises(release.ReleaseError, match="another target"):
        release.load_release(cfg, other)
    path = release.release_dir(cfg.profile) / release.FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(release.ReleaseError, match="SHA-256"):
        release.load_release(cfg, teacher)


def test_a_release_that_could_not_be_written_is_refused_before_distilling(workspace, monkeypatch):
    monkeypatch.setattr(distill, "distill_student", lambda *a, **k: pytest.fail("distilled first"))
    with pytest.raises(release.ReleaseError, match="set distill.train_layers"):
        distill.run_distill(smoke(train_layers=0), progress=False, release=True)  # every layer: not rounded
    cut = distill.make_student(load_model(smoke().model), (0, 1, 3))
    monkeypatch.setattr(release, "LIMIT_MB", release.release_megabytes(cut, smoke(train_layers=2)) - 0.001)
    with pytest.raises(release.ReleaseError, match="smaller distill.train_layers"):
        distill.run_distill(smoke(train_layers=2), progress=False, release=True)
    monkeypatch.setattr(release, "LIMIT_MB", 0.01)
    with pytest.raises(release.ReleaseError, match="even one of"):
        distill.run_distill(smoke(), progress=False, release=True)
    assert not release.release_dir("smoke").exists()


COMMITTED = sorted(path.parent.name for path in release.SOURCES.glob("*/manifest.json"))


@pytest.mark.model
@pytest.mark.parametrize("profile", COMMITTED)
def test_a_committed_release_is_what_its_manifest_names_and_rebuilds_its_source(profile):
    """Both SHA-256 sums, the size limit, and the source rebuilt on the real target has the released digest."""
    manifest = post.files.read_json(release.release_dir(profile) / "manifest.json")
    assert manifest["megabytes"] <= release.LIMIT_MB and manifest["train_layers"] > 0
    made = {key: manifest["config"][key] for key in ("model", "seed", "data", "distill")}
    cfg = load_config(profile, made)  # the settings it was made with (the profile may have moved on)
    assert release.release_hash(cfg) == manifest["distill_hash"]
    student, record = release.load_release(cfg, load_model(cfg.model))
    assert record["distill_hash"] == manifest["distill_hash"] and record["train_layers"] == manifest["train_layers"]
    assert len(distill.layer_list(student)[1]) == len(manifest["student_layers"])
