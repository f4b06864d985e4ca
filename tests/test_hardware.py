"""What "auto" means here: the device torch finds, and the precision a probe measures faster (remembered)."""

import json
from pathlib import Path

import pytest
import torch

from post import hardware

CPUINFO = Path("/proc/cpuinfo")
AVX512_BF16 = CPUINFO.exists() and "avx512_bf16" in CPUINFO.read_text()


@pytest.fixture
def fresh_probe(tmp_path, monkeypatch):
    """No remembered probe result, in this process or on disk, and no forced answer."""
    monkeypatch.delenv(hardware.FORCE_ENV, raising=False)
    monkeypatch.setattr(hardware, "CACHE", tmp_path)
    hardware.measured_precision.cache_clear()
    yield tmp_path
    hardware.measured_precision.cache_clear()


@pytest.mark.parametrize("seconds, expected", [({"fp32": 1.0, "bf16": 0.3}, "bf16"),  # avx512_bf16
                                               ({"fp32": 0.6, "bf16": 94.0}, "fp32"),  # AVX2: slow fallback
                                               ({"fp32": 1.0, "bf16": 0.9}, "fp32")])  # a tie keeps fp32
def test_auto_precision_follows_the_probe_and_is_remembered_per_machine(fresh_probe, monkeypatch, seconds,
                                                                         expected):
    calls = []
    monkeypatch.setattr(hardware, "probe", lambda device_type: calls.append(device_type) or seconds)
    assert hardware.resolve_precision("auto") == expected
    hardware.measured_precision.cache_clear()  # a new process: reads the file instead of probing again
    assert hardware.resolve_precision("auto") == expected and calls == ["cpu"]
    saved = json.loads((fresh_probe / "precision.json").read_text())
    assert saved[hardware.machine_key("cpu")]["precision"] == expected
    assert hardware.resolve_precision("fp32") == "fp32" and hardware.resolve_precision("bf16") == "bf16"


def test_a_corrupt_probe_file_is_measured_again(fresh_probe, monkeypatch):
    (fresh_probe / "precision.json").write_text('{"trunc')
    monkeypatch.setattr(hardware, "probe", lambda device_type: {"fp32": 1.0, "bf16": 9.0})
    assert hardware.resolve_precision("auto") == "fp32"


def test_the_forced_answer_skips_the_probe(fresh_probe, monkeypatch):
    monkeypatch.setattr(hardware, "probe", lambda device_type: pytest.fail("probed although forced"))
    for forced in ("bf16", "fp32"):
        monkeypatch.setenv(hardware.FORCE_ENV, forced)
        assert hardware.resolve_precision("auto") == forced
    monkeypatch.setenv(hardware.FORCE_ENV, "fp16")
    with pytest.raises(ValueError, match="POST_AUTO_PRECISION='fp16'"):
        hardware.resolve_precision("auto")


def test_autocast_runs_auto_in_the_resolved_precision(monkeypatch):
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    for forced, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        monkeypatch.setenv(hardware.FORCE_ENV, forced)
        with hardware.autocast("auto", "cpu"):
            assert torch.nn.functional.linear(x, w).dtype == dtype
    with pytest.raises(ValueError, match="tune.precision must be one of"):
        hardware.autocast("fp8", "cpu", "tune.precision")


@pytest.mark.skipif(not AVX512_BF16, reason="measures a CPU with native bf16 matmuls")
def test_the_probe_measures_bf16_faster_on_a_cpu_with_avx512_bf16(fresh_probe):
    seconds = hardware.probe("cpu")
    assert seconds["bf16"] * hardware.BF16_MIN_SPEEDUP < seconds["fp32"], seconds
    assert hardware.resolve_precision("auto") == "bf16"


def test_device_auto_is_cuda_only_where_torch_finds_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_device("auto") == torch.device("cpu") == hardware.resolve_device("cpu")
    with pytest.raises(ValueError, match="device = 'cuda': torch finds no CUDA device"):
        hardware.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.resolve_device("auto") == torch.device("cuda")
