"""Padding as a lever: one training step with its batch split into length-sorted groups, against the whole batch.

A random training batch of texts of very different lengths is left-padded to its longest (bench/stage_profile.py
measured 42-48% padding in the stages' training batches). Sorting the batch by length, cutting it into groups and
trimming each group's padding columns computes the same per-example losses and gradients (position ids come from
the attention mask; the groups' results are put back in the batch's order), up to the order of float sums, on
fewer tokens. Each step here is a forward and backward of the real source (or target) on a batch of the task's
training texts: shared prompt (a CompPT / FullPT / transfer step) or one prompt copy per example (a DP step's
per-sample gradients). Groups 1 (today), 2 and 4 are timed interleaved on the same batches; the largest
difference of losses and gradients to the whole batch is recorded. The stages' training steps run in groups of
about ``post.prompt.GROUP_SIZE`` examples (``post.prompt.grouped_logits``, timed here). Writes
bench/results/length_groups.json.

    python bench/length_groups.py [--profile cpu] [--model source|target] [--batch 32] [--per-example]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from post.artifacts import require, source_model_dir
from post.config import load_config
from post.files import relative, write_json
from post.hardware import autocast
from post.models import load
from post.prompt import SoftPrompt, Verbalizer, encode, grouped_logits
from post.tasks import get_task, load_split

GROUPS = (1, 2, 4)


def step(model, verbalizer, batch, labels, weight, groups: int, per_example: bool):
    """Loss and gradient of one step: the whole batch's summed cross-entropy, backward to the prompt."""
    w = weight.detach().clone().requires_grad_()
    prompt = w.unsqueeze(0).repeat(len(labels), 1, 1) if per_example else w
    logits = grouped_logits(model, batch["input_ids"], batch["attention_mask"], prompt, -(-len(labels) // groups))
    losses = F.cross_entropy(verbalizer.scores(logits), labels, reduction="none")
    losses.sum().backward()
    return losses.detach(), w.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--model", choices=("source", "target"), default="source")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--per-example", action="store_true", help="one prompt copy per example (a DP step)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "length_groups.json"))
    args = parser.parse_args()
    cfg = load_config(args.profile)
    name = require(source_model_dir(cfg.profile), "source_model", cfg.profile) if args.model == "source" else cfg.model
    model, tokenizer = load(name, device=cfg.device)
    task = get_task(args.task)
    verbalizer = Verbalizer.for_task(task, tokenizer)
    train = load_split(args.task, "train", cfg.data.max_train)
    weight = SoftPrompt.from_text(model, tokenizer, task.instruction, cfg.tune.prompt_length).weight
    generator = torch.Generator().manual_seed(cfg.seed)
    seconds, padding = {g: [] for g in GROUPS}, []
    worst = {g: {"loss": 0.0, "gradient_relative": 0.0} for g in GROUPS}
    for repeat in range(args.repeats + 1):  # the first round warms up
        idx = torch.randperm(len(train), generator=generator)[:args.batch].tolist()
        batch = encode(task, tokenizer, [train.texts[i] for i in idx], cfg.data.max_text_tokens)
        labels = torch.tensor([train.labels[i] for i in idx])
        padding.append(1 - batch["attention_mask"].float().mean().item())
        whole = None
        for groups in GROUPS:
            with autocast(cfg.tune.precision, "cpu"):
                start = time.perf_counter()
                losses, grad = step(model, verbalizer, batch, labels, weight, groups, args.per_example)
                took = time.perf_counter() - start
            whole = whole or (losses, grad)
            worst[groups]["loss"] = max(worst[groups]["loss"], (losses - whole[0]).abs().max().item())
            worst[groups]["gradient_relative"] = max(worst[groups]["gradient_relative"],
                                                     ((grad - whole[1]).abs().max() / whole[1].abs().max()).item())
            if repeat:
                seconds[groups].append(took)
    median = {g: statistics.median(s) for g, s in seconds.items()}
    result = {"profile": cfg.profile, "task": args.task, "model": relative(name), "batch": args.batch,
              "per_example": args.per_example, "precision": cfg.tune.precision, "threads": torch.get_num_threads(),
              "padding_share": statistics.mean(padding), "median_seconds": median,
              "speedup_over_whole_batch": {g: median[1] / median[g] for g in GROUPS},
              "largest_difference": worst, "repeats": args.repeats}
    write_json(Path(args.out), result)
    print(result)


if __name__ == "__main__":
    main()
