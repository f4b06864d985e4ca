"""The provider's release: the trained layers only, rebuilt into the very source that was distilled."""

import pytest
import torch

import post.artifacts
import post.distill as distill
import post.release as release
from post.config import load_config
from post.models import load_model

SETTINGS = {"objective": "readout", "readout_examples": 24, "readout_holdout": 8, "epochs": 1, "batch_size": 4,
            "lr": 3e-3, "precision": "fp32", "num_student_layers": 3, "train_layers": 1, "eval_every": 6}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    monkeypatch.setattr(post.artifacts, "ARTIFACTS", tmp_path / "artifacts")
    monkeypatch.setattr(post.artifacts, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(release, "SOURCES", tmp_path / "sources")
    return tmp_path


def smoke(**overrides):
    return load_config("smoke", {"distill": {**SETTINGS, **overrides}})


def source_state(profile: str) -> dict:
    return load_model(str(post.artifacts.source_model_dir(profile))).state_dict()


@pytest.mark.stage
def test_a_release_carries_only_the_trained_layers_and_rebuilds_the_same_source(sandbox, monkeypatch):
    cfg = smoke()
    record = distill.run_distill(cfg, progress=False, release=True)
    made = source_state(cfg.profile)
    manifest = post.artifacts.read_json(release.release_dir(cfg.profile) / "manifest.json")
    assert manifest["distill_hash"] == record["distill_hash"] and manifest["train_layers"] == 1
    assert manifest["sha256"] == release.sha256(release.release_dir(cfg.profile) / release.FILE)
    tensors = release.load_file(str(release.release_dir(cfg.profile) / release.FILE))
    assert sum(t.numel() for t in tensors.values()) == record["trainable_params"]  # the top layer and final norm
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())

    # another machine: no source model, no distillation, only the committed release
    post.artifacts.source_model_dir(cfg.profile).joinpath("manifest.json").unlink()
    monkeypatch.setattr(distill, "distill_student", lambda *a, **k: pytest.fail("distilled again"))
    assert distill.run_distill(cfg, progress=False) == record
    rebuilt = source_state(cfg.profile)
    assert rebuilt.keys() == made.keys() and all(torch.equal(rebuilt[k], made[k]) for k in made)


def test_a_release_for_other_settings_is_not_used_and_a_tampered_one_is_refused(sandbox):
    cfg = smoke()
    teacher = load_model(cfg.model)
    student, record = distill.distill_student(cfg, teacher, post.models.load_tokenizer(cfg.model),
                                              sandbox / "work", progress=False)
    release.write_release(cfg, student, record)
    assert release.load_release(smoke(lr=1e-3), teacher) is None  # another source: distil it
    assert release.load_release(cfg, teacher) is not None
    path = release.release_dir(cfg.profile) / release.FILE
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(release.ReleaseError, match="SHA-256"):
        release.load_release(cfg, teacher)


def test_a_release_over_the_size_limit_is_refused(sandbox, monkeypatch):
    cfg = smoke(train_layers=0)
    teacher = load_model(cfg.model)
    student = distill.make_student(teacher, (0, 1, 3))
    monkeypatch.setattr(release, "LIMIT_MB", 0.01)
    with pytest.raises(release.ReleaseError, match="train_layers"):
        release.write_release(cfg, student, {"distill_hash": "x", "student_layers": [0, 1, 3]})
    assert not release.release_dir(cfg.profile).exists()
