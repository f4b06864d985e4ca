"""Cost of privacy per step: a DP-SGD prompt-tuning step against a plain one, on the source model.

Three steps on the same batch of real task examples (fixed size, so the work is identical):
- ``plain``: the prompt shared by the batch, mean loss, backward, Adam;
- ``dp``: what ``post.tune`` does: a per-example copy of the prompt, one backward for all per-sample
  gradients, opacus' DPOptimizer (clip, sum, noise) around Adam;
- ``opacus_hooks``: for contrast, the prompt as a module inside opacus' hook-based ``GradSampleModule``
  (functorch computes the per-sample gradients of the prompt-prepending layer from captured activations).
The steps are timed interleaved (the machine is shared), in wall and process CPU time, and the medians
compared; the per-sample gradients of the two DP variants are checked against each other.
Writes ``bench/results/dp_step.json``.

    python bench/dp_step.py [--model artifacts/cpu/source_model] [--batch B] [--prompt-length P]
                             [--precision auto|fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from post import dp
from post.artifacts import require, source_model_dir
from post.config import load_config
from post.hardware import PRECISIONS, resolve_precision
from post.models import load, model_name
from post.prompt import SoftPrompt, Verbalizer, encode, next_token_logits
from post.tasks import get_task, load_split
from post.tune import example_losses, per_sample_grads


class PromptPrepend(nn.Module):
    """The prompt as a layer: (B, L, D) input embeddings -> (B, P + L, D); what a hook-based engine sees."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.weight.unsqueeze(0).expand(len(embeds), -1, -1), embeds], dim=1)


class HookedPromptLM(nn.Module):
    """Frozen LM + PromptPrepend, returning class scores, so GradSampleModule can wrap the whole thing."""

    def __init__(self, model, weight: torch.Tensor, verbalizer: Verbalizer):
        super().__init__()
        self.model, self.prepend, self.verbalizer = model, PromptPrepend(weight), verbalizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # the layer sees a batch-first (B, 0, D) input, so the engine knows B; out comes the (B, P, D) prompt
        empty = torch.zeros(len(input_ids), 0, self.prepend.weight.shape[1])
        prompt = self.prepend(empty)
        return self.verbalizer.scores(next_token_logits(self.model, input_ids, attention_mask, prompt))


def main() -> None:
    cpu = load_config("cpu")  # defaults: the study's settings
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the cpu profile's distilled source model")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--batch", type=int, default=cpu.tune.batch_size)
    parser.add_argument("--prompt-length", type=int, default=cpu.tune.prompt_length)
    parser.add_argument("--max-text-tokens", type=int, default=cpu.data.max_text_tokens)
    parser.add_argument("--precision", choices=PRECISIONS, default=cpu.tune.precision,
                        help="default: the cpu profile's tune.precision; auto resolves as the stages resolve it")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dp_step.json"))
    args = parser.parse_args()
    precision = resolve_precision(args.precision, "cpu", "--precision")
    name = args.model or str(require(source_model_dir("cpu"), "source_model", "cpu"))
    model, tok = load(name)
    task = get_task(args.task)
    split = load_split(args.task, "train", args.batch)
    batch = encode(task, tok, split.texts, args.max_text_tokens)
    labels = torch.tensor(split.labels)
    verbalizer = Verbalizer.for_task(task, tok)
    init = SoftPrompt.from_text(model, tok, task.instruction, args.prompt_length).weight
    plan = dp.DPPlan(8.0, 1e-5, 0.5, 1.0, args.batch / 10_000, 100, 10_000)  # sigma, C as in a typical run

    # as post.tune trains: forward and backward under autocast, the optimizer step in fp32
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
    plain_weight = nn.Parameter(init.detach().clone())
    plain_opt = torch.optim.Adam([plain_weight], lr=0.01)

    def plain() -> None:
        plain_opt.zero_grad()
        with autocast:
            example_losses(model, verbalizer, batch, labels, plain_weight).mean().backward()
        plain_opt.step()

    dp_weight = nn.Parameter(init.detach().clone())
    dp_opt, _ = dp.optimizer(dp_weight, torch.optim.Adam([dp_weight], lr=0.01), plan, dp.SecretStream())
    grads_ours = {}

    def dp_step() -> None:
        dp_opt.zero_grad()
        with autocast:
            grads, _ = per_sample_grads(model, verbalizer, batch, labels, dp_weight)
        grads_ours.setdefault("first", grads)
        dp.set_grad_sample(dp_weight, grads)
        dp_opt.step()

    steps = {"plain": plain, "dp": dp_step}
    hooks_error = None
    try:
        hooked = GradSampleModule(HookedPromptLM(model, init, verbalizer), loss_reduction="sum")
        hooked_weight = hooked._module.prepend.weight
        hooked_opt = DPOptimizer(torch.optim.Adam([hooked_weight], lr=0.01),
                                 noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                                 expected_batch_size=args.batch, loss_reduction="sum")
        grads_hooked = {}

        def hooks_step() -> None:
            hooked_opt.zero_grad()
            with autocast:
                nn.functional.cross_entropy(hooked(batch["input_ids"], batch["attention_mask"]), labels,
                                            reduction="sum").backward()
            grads_hooked.setdefault("first", hooked_weight.grad_sample.detach().clone())
            hooked_opt.step()

        # the prompt layer's input needs no gradient; torch notes that the hook fires on outputs, as intended
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        hooks_step()  # fails here if the engine cannot handle the layer
        steps["opacus_hooks"] = hooks_step
    except Exception as error:  # recorded in the JSON: the contrast is optional, the DP step is not
        hooks_error = f"{type(error).__name__}: {error}"

    for step in steps.values():
        step()  # warm-up
    times = {key: [] for key in steps}
    cpu_times = {key: [] for key in steps}  # process CPU time: less sensitive to other jobs on shared cores
    for _ in range(args.repeats):
        for key, step in steps.items():  # interleaved, so load changes hit every variant alike
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times[key].append(time.perf_counter() - start)
            cpu_times[key].append(time.process_time() - cpu_start)
    median = {key: statistics.median(values) for key, values in times.items()}
    cpu_median = {key: statistics.median(values) for key, values in cpu_times.items()}
    result = {
        "model": model_name(model), "layers": model.config.num_hidden_layers, "task": args.task,
        "batch": args.batch, "prompt_length": args.prompt_length, "precision": precision,
        "precision_setting": args.precision,
        "sequence_length": batch["input_ids"].shape[1],
        "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0], "torch": torch.__version__,
        "seconds_median": median, "seconds_all": times, "cpu_seconds_median": cpu_median,
        "dp_over_plain": median["dp"] / median["plain"], "goal_dp_over_plain": 1.15,
        "dp_over_plain_cpu_time": cpu_median["dp"] / cpu_median["plain"],
        "opacus_hooks_over_plain": median["opacus_hooks"] / median["plain"] if hooks_error is None else None,
        "opacus_hooks_error": hooks_error,
    }
    if "opacus_hooks" in steps:
        result["max_abs_diff_per_sample_grads_ours_vs_hooks"] = float(
            (grads_ours["first"] - grads_hooked["first"]).abs().max())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
