"""What "auto" means on this machine: the device, and the precision the stages run in.

``device: auto`` is cuda where torch finds one, else cpu. ``precision: auto`` means bf16 autocast only where a
short probe measures it clearly faster than fp32: on CPUs with avx512_bf16 bf16 is several times faster, on
AVX2-only CPUs torch falls back to a path ~100x slower, so no fixed choice suits every machine. The probe's
answer is remembered per machine (processor and torch) in ``artifacts/cache/precision.json``;
``POST_AUTO_PRECISION`` forces it. ``post.config.load_config`` resolves both settings once, so a loaded
profile says what ran and hashing it never probes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import platform
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .files import CACHE, read_json, readable, write_json

DEVICES = ("auto", "cpu", "cuda")  # "auto": cuda if available, else cpu
PRECISIONS = ("auto", "fp32", "bf16")  # "auto": bf16 only where the probe measures it faster here


def resolve_device(setting: str = "auto") -> torch.device:
    """The device a ``device`` setting means here: "auto" is cuda if torch finds one, else cpu."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device = {setting!r}: torch finds no CUDA device here; use auto or cpu")
    return torch.device(setting)


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


def resolved(cfg):
    """A profile (``post.config.Config``) with an "auto" device and precision replaced by what they mean here,
    once, so that hashing it never probes. ``auto_settings`` keeps which settings said "auto": the provider's
    release is the same model wherever "auto" means something else (post.release)."""
    device = resolve_device(cfg.device).type
    changes, said_auto = {"device": device}, set(cfg.auto_settings)
    for name in (f.name for f in dataclasses.fields(cfg)):  # every section with a precision setting
        section = getattr(cfg, name)
        if getattr(section, "precision", None) == "auto":
            changes[name] = dataclasses.replace(section, precision=resolve_precision("auto", device))
            said_auto.add(f"{name}.precision")
    return dataclasses.replace(cfg, auto_settings=tuple(sorted(said_auto)), **changes)
