"""Forward throughput of the target next to a plain matmul, in fp32 and in bf16, measured in the same run.

The prediction forward (``next_token_logits``: all layers, LM head at the last position only) is timed on
batches of the length the study uses, in fp32 and under bf16 autocast (as the stages run it); its FLOPs are
counted analytically from the model's shapes. The matmul peak of each dtype is the best of a few large
``torch.mm`` calls. Whether bf16 pays depends on the CPU (several times faster with avx512_bf16, ~100x
slower on AVX2 alone), so the record also says what ``precision: auto`` chose here. Writes
``bench/results/forward_throughput.json``: fp32 at the top level, the bf16 run under ``bf16``.

    python bench/forward_throughput.py [--model smollm2-135m-instruct] [--batch 16] [--seq 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from post.hardware import autocast, probe, resolve_precision
from post.models import load
from post.prompt import next_token_logits

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_flops(config, batch: int, seq: int) -> float:
    """Matmul FLOPs of one prediction forward: projections, MLP and attention per layer, LM head once."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = d * config.num_key_value_heads // config.num_attention_heads
    tokens = batch * seq
    per_token = 2 * (d * d + 2 * d * kv + d * d + 3 * d * f)  # q, k, v, o projections; gate, up, down
    attention = 2 * 2 * batch * seq * seq * d  # QK^T and AV (full square, as SDPA computes it)
    return layers * (tokens * per_token + attention) + 2 * batch * d * config.vocab_size


@torch.inference_mode()
def forward_throughput(model, batch: int, seq: int, repeats: int, precision: str = "fp32") -> dict:
    ids = torch.randint(100, 40000, (batch, seq))
    mask = torch.ones_like(ids)
    with autocast(precision, "cpu"):
        next_token_logits(model, ids, mask)
        best = min(_timed(lambda: next_token_logits(model, ids, mask)) for _ in range(repeats))
    flops = forward_flops(model.config, batch, seq)
    return {"batch": batch, "seq": seq, "seconds": best, "tokens_per_s": batch * seq / best,
            "gflops_per_s": flops / best / 1e9, "gflop_per_forward": flops / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "forward_throughput.json"))
    args = parser.parse_args()
    model, _ = load(args.model)
    measured = {}
    for precision, dtype in PRECISIONS.items():
        peak = matmul_gflops(dtype)
        runs = [forward_throughput(model, args.batch, seq, args.repeats, precision) for seq in (args.seq, 2 * args.seq)]
        peak_after = matmul_gflops(dtype)  # the machine is shared: bracket the model runs with two peak readings
        measured[precision] = {"matmul_gflops_per_s": max(peak, peak_after),
                               "matmul_gflops_per_s_before_after": [peak, peak_after], "forward": runs,
                               "fraction_of_matmul_peak": [r["gflops_per_s"] / max(peak, peak_after) for r in runs]}
    result = {"model": args.model, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), **measured["fp32"], "bf16": measured["bf16"],
              "bf16_forward_speedup": [f["seconds"] / b["seconds"]
                                       for f, b in zip(measured["fp32"]["forward"], measured["bf16"]["forward"])],
              "auto_precision": resolve_precision("auto"), "probe_seconds": probe("cpu")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
