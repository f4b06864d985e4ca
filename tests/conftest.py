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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and far faster when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
