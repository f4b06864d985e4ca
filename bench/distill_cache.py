"""Which teacher cache is fastest for distillation here: hidden states, top-k logits, or none (live teacher)?

On a few public sequences of a profile's shape it times, per token: the teacher's forward pass in fp32 and
under bf16 autocast, filling each kind of cache (forward + write), and one student training step fed from
each cache or from the live teacher (in the profile's precision, ``auto`` resolved as the stage resolves it and
recorded with whether the CPU has avx512_bf16, plus the hidden cache in the other precision).
Each time is the median over batches after a warm-up, as wall and as process CPU time (on a shared machine
the CPU time is the steadier number). It also reports the disk each cache needs per token, how far the bf16
teacher is from the fp32 one, how much of the teacher's temperature-T probability mass the top-k logits cover
(what the top-k KL sees exactly; the rest is one bucket), and projects the training time for the profile.
Writes ``bench/results/distill_cache.json``.

    python bench/distill_cache.py [--profile cpu] [--sequences 24] [--steps 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import has_avx512_bf16
from post import corpus, distill, objectives, teacher_outputs
from post.config import CHOICES, load_config
from post.hardware import resolve_precision
from post.models import load
from post.student import forward


class Clock:
    """Wall and CPU seconds of repeated calls; reports milliseconds per token (medians)."""

    def __init__(self, tokens: int):
        self.tokens, self.wall, self.cpu = tokens, [], []

    def __call__(self, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)
        return out

    def ms(self) -> dict:
        return {"wall": float(np.median(self.wall)) / self.tokens * 1e3,
                "cpu": float(np.median(self.cpu)) / self.tokens * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--sequences", type=int, default=24, help="public sequences to cache and train on")
    parser.add_argument("--steps", type=int, default=3, help="timed student steps per cache kind")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill_cache.json"))
    args = parser.parse_args()
    cfg = load_config(args.profile)
    teacher, tokenizer = load(cfg.model)
    # the precision the stage would train in: "auto" becomes what the probe chose for this machine
    dc = dataclasses.replace(cfg.distill, precision=resolve_precision(cfg.distill.precision, teacher.device.type,
                                                                       "distill.precision"))
    layers = distill.student_layers(dc, len(distill.layer_list(teacher)[1]))
    small = dataclasses.replace(dc, train_sequences=args.sequences, eval_sequences=dc.batch_size)
    train_ids, eval_ids = corpus.public_sequences(small, tokenizer, cfg.seed)
    batch_tokens = dc.batch_size * dc.seq_len
    ms, disk, logits = {}, {}, {}

    batches = train_ids.split(dc.batch_size)
    with torch.inference_mode():
        for precision in ("fp32", "bf16"):
            clock = Clock(batch_tokens)
            with teacher_outputs.autocast(dataclasses.replace(dc, precision=precision), teacher.device):
                forward(teacher, batches[0])  # warm-up
                for ids in batches:
                    logits[precision] = clock(lambda: forward(teacher, ids)[0].float())
            ms[f"teacher_forward_{precision}"] = clock.ms()
    exact, rounded = F.log_softmax(logits["fp32"], -1), F.log_softmax(logits["bf16"], -1)
    bf16_vs_fp32 = {"kl": (exact.exp() * (exact - rounded)).sum(-1).mean().item(),
                    "top1_agreement": (exact.argmax(-1) == rounded.argmax(-1)).float().mean().item()}
    probs = torch.softmax(logits["fp32"] / dc.temperature, -1).sort(-1, descending=True).values.cumsum(-1)
    mass = {k: probs[..., k - 1].mean().item() for k in (1, 64, 1024, 4096) if k <= probs.shape[-1]}

    with tempfile.TemporaryDirectory() as tmp:
        # "none" fills the held-out rows only (subtracted from the others); "hidden" again in the other precision
        other = "fp32" if dc.precision == "bf16" else "bf16"
        for mode, precision in (("none", dc.precision), ("hidden", dc.precision), ("topk", dc.precision),
                                ("hidden", other)):
            mdc = dataclasses.replace(small, teacher_cache=mode, precision=precision)
            name = mode if precision == dc.precision else f"{mode}_{precision}"
            cache = teacher_outputs.TeacherCache(Path(tmp) / name, mdc, train_ids, eval_ids, teacher)
            clock = Clock(train_ids.numel())
            clock(lambda: cache.fill(teacher, dc.batch_size, progress=False))
            if mode == "none":
                held_out = clock.ms()
            else:
                ms[f"fill_{name}"] = {k: v - held_out[k] for k, v in clock.ms().items()}
                disk[name] = sum((Path(tmp) / name / f"{field}.npy").stat().st_size for field in cache.fields
                                 if field != "eval_hidden") / train_ids.numel()
            cache.load()
            student = distill.make_student(teacher, layers)
            params = distill.trainable(student, dc)
            optimizer = torch.optim.AdamW(params, lr=dc.lr)
            clock = Clock(batch_tokens)
            objective = objectives.PackedText(cache, mdc, teacher)
            for step in range(args.steps + 1):
                rows = distill.batch_rows(step, args.sequences, dc.batch_size, cfg.seed)

                def step_fn():
                    distill.train_step(student, optimizer, params, objective, rows)

                if step == 0:
                    step_fn()  # warm-up
                else:
                    clock(step_fn)
            ms[f"step_{name}"] = clock.ms()

    disk["full logits, fp16 (for comparison; not built)"] = 2 * teacher.config.vocab_size
    tokens = dc.train_sequences * dc.seq_len
    projected = {}
    for mode in CHOICES["distill.teacher_cache"]:  # in the profile's precision
        for epochs in (1, 2):
            per_token = {k: epochs * ms[f"step_{mode}"][k] + (ms[f"fill_{mode}"][k] if mode != "none" else 0)
                         for k in ("wall", "cpu")}
            projected[f"{mode}, {epochs} epoch(s)"] = {k: v * tokens / 1e3 for k, v in per_token.items()}
    result = {"profile": args.profile, "model": cfg.model, "precision": dc.precision,
              "precision_setting": cfg.distill.precision, "avx512_bf16": has_avx512_bf16(),
              "threads": torch.get_num_threads(), "batch": [dc.batch_size, dc.seq_len],
              "student_layers": list(layers), "ms_per_token": ms, "disk_bytes_per_token": disk,
              "bf16_teacher_vs_fp32": bf16_vs_fp32, "teacher_mass_in_top_k": mass,
              "projected_for": {"train_sequences": dc.train_sequences, "seq_len": dc.seq_len, "tokens": tokens},
              "projected_training_seconds": projected,
              "projected_cache_gb": {name: b * tokens / 1e9 for name, b in disk.items()},
              "load_average_after": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
