import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the smoke profile's tiny random Llama."""
    from post.models import load

    return load("tiny-random-llama")


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the real offline target, SmolLM2-135M-Instruct (from the converted cache)."""
    from post.models import load

    return load("smollm2-135m-instruct")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A stage's whole world under tmp_path: artifacts, results, figures and releases. A test that asks for it
    runs a stage (or both parties), and that puts it in the ``stage`` tier."""
    import post.artifacts
    import post.release

    for name in ("ARTIFACTS", "RESULTS", "FIGURES"):
        monkeypatch.setattr(post.artifacts, name, tmp_path / name.lower())
    monkeypatch.setattr(post.release, "SOURCES", tmp_path / "sources")  # a committed release stays out of it
    return tmp_path


@pytest.fixture(scope="session")
def dp_record():
    """``dp_record(epsilon, randomness)``: a prompt's DP record as 02 writes it, for a small planned run whose
    stated epsilon the accountant confirms (a prompt file is checked against it when loaded)."""
    from post import dp

    def record(epsilon: float = 8.0, randomness: str = "secret") -> dict:
        plan = dp.plan(epsilon, 100, 10, 10, 1.0)
        spent = dp.prv_epsilon(plan.noise_multiplier, plan.sample_rate, plan.steps, plan.delta)
        return {"private": True, **plan.to_dict(), "randomness": randomness, "prv_epsilon": spent,
                "steps_taken": plan.steps}

    return record


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and far faster when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Test tiers, by what a test runs: its own mark, else the fixtures it uses. `make test-fast` runs `unit` only;
# `make test` (CI) runs everything.
TIERS = ("unit", "stage", "model", "e2e")
STAGE_FIXTURES = {"workspace"}  # runs a stage in a temporary world
MODEL_FIXTURES = {"smol"}  # loads the real SmolLM2-135M target


def pytest_configure(config):
    for tier, what in (("unit", "fast tests on tiny models and fixtures"),
                       ("stage", "runs a whole stage (or both parties) on the tiny model; mark it on the test"),
                       ("model", "loads the real SmolLM2-135M target"),
                       ("e2e", "runs make, papermill or a Jupyter kernel end to end")):
        config.addinivalue_line("markers", f"{tier}: {what}")


def pytest_collection_modifyitems(items):
    """Each test gets exactly one tier: its own mark (or its module's), else from the fixtures it uses."""
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        tier = "model" if MODEL_FIXTURES & fixtures else "stage" if STAGE_FIXTURES & fixtures else "unit"
        item.add_marker(tier)
