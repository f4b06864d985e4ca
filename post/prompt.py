"""The prompted LM core: a soft prompt, the verbalizer, and one forward pass that returns class scores.

Layout under left padding: ``[prompt (P) | pads | text tokens]``. The attention mask is 1 on the prompt and
the text and 0 on the pads; position ids count only attended tokens, so an example gets the same positions
(prompt 0..P-1, text from P) whether it is alone or padded in a batch. The prediction position is the last
one, so the model computes logits there only (``logits_to_keep=1``). :func:`prompt_class_scores` is the one
loop that scores many texts: evaluation, the transfer's fixed logits and the audit all read them through it.

What leaves the data owner is the prompt file: the weights and ``meta``, whitelisted public facts
(:data:`PROVIDER_KEYS`). Whatever else the owner learnt while tuning (training curves, validation scores, batch
sizes, costs, the skip-if-done key, which digests a task file's data) is ``record`` and stays in an owner-side
file next to it, ``<prompt>.owner.json``: those numbers come from the private data without noise, so they would
void the DP guarantee of the weights. A prompt is named by :meth:`SoftPrompt.digest`, a digest of its weights,
which tells nobody more than the weights do.

A prompt file is checked when it is loaded, whoever made it: weights of the shape its metadata states and
finite, and a stated DP guarantee that its own DP record gives when the accountant recomputes it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import dp
from .cost import Cost
from .declarations import Task
from .files import UnreadableArtifact, atomic_path, read_json, relative, write_json
from .models import model_name, stable_name


# what a prompt file handed to the provider may carry: what the transfer needs, and the public DP facts
PROVIDER_KEYS = frozenset({"length", "hidden_size", "model", "task", "template", "epsilon", "dp", "method"})
PROVIDER_DP_KEYS = frozenset({"private", "randomness", "epsilon", "delta", "noise_multiplier", "max_grad_norm",
                              "sample_rate", "steps", "n", "accountant", "prv_epsilon", "rdp_epsilon",
                              "steps_taken"})


class PromptMismatch(ValueError):
    """A saved prompt used with a model it was not made for."""


class NotReleasable(ValueError):
    """A prompt that claims DP but must not leave the owner: its guarantee does not hold."""


class FalseClaim(UnreadableArtifact):
    """A prompt file whose stated DP guarantee its own DP record does not give."""


CLAIM_KEYS = ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps_taken", "prv_epsilon")
CLAIM_TOLERANCE = 1e-3  # relative: the accountant is deterministic, so only rounding may differ
GROUP_SIZE = 16  # training steps run length-sorted groups of about this many examples (bench/length_groups.py)


def check_claim(meta: dict, where: str) -> None:
    """Refuse a prompt whose stated epsilon is not what the PRV accountant gives for its own DP record
    (sigma, q, steps taken, delta): an edited file cannot claim more privacy than its noise bought.

    A prompt without noise (sigma = 0) claims no guarantee that could be checked; ``check_release`` refuses
    to hand it over.
    """
    privacy, epsilon = meta.get("dp") or {}, meta.get("epsilon", math.inf)
    if not privacy.get("private"):
        if not (isinstance(epsilon, (int, float)) and math.isinf(epsilon)):
            raise FalseClaim(f"{where} states epsilon {epsilon!r} but has no DP record")
        return
    missing = [key for key in CLAIM_KEYS if not isinstance(privacy.get(key), (int, float))]
    if missing:
        raise FalseClaim(f"{where} claims DP but its record lacks {', '.join(missing)}")
    if privacy["noise_multiplier"] == 0:
        return
    if privacy["epsilon"] != epsilon:
        raise FalseClaim(f"{where} states epsilon {epsilon} but its DP record says {privacy['epsilon']}")
    try:
        recomputed = dp.prv_epsilon(float(privacy["noise_multiplier"]), float(privacy["sample_rate"]),
                                    int(privacy["steps_taken"]), float(privacy["delta"]))
    except (ValueError, ArithmeticError, RuntimeError) as err:  # q outside (0, 1], a negative sigma, ...
        raise FalseClaim(f"{where}: its DP record cannot be accounted ({err})") from None
    stated = float(privacy["prv_epsilon"])
    if recomputed > epsilon * (1 + CLAIM_TOLERANCE) or abs(recomputed - stated) > CLAIM_TOLERANCE * max(1.0, stated):
        raise FalseClaim(f"{where} claims epsilon {epsilon:g} (spent {stated:.4g}), but the PRV accountant gives "
                         f"{recomputed:.4g} for its sigma {privacy['noise_multiplier']:.4g}, q "
                         f"{privacy['sample_rate']:.4g}, {privacy['steps_taken']} steps and delta "
                         f"{privacy['delta']:.3g}: refused")


def provider_meta(meta: dict) -> dict:
    """The whitelisted public facts of ``meta`` (and of its ``dp`` record): what may travel with the weights."""
    public = {key: value for key, value in meta.items() if key in PROVIDER_KEYS}
    if isinstance(public.get("dp"), dict):
        public["dp"] = {key: value for key, value in public["dp"].items() if key in PROVIDER_DP_KEYS}
    return public


def check_release(meta: dict) -> None:
    """Refuse to hand over a DP prompt whose guarantee does not hold: seeded randomness, or no noise at all."""
    privacy = meta.get("dp", {})
    if not privacy.get("private"):
        return
    where = f"prompt for task {meta.get('task')!r} at epsilon {meta.get('epsilon')}"
    if privacy.get("randomness") == dp.NOT_PRIVATE:
        raise NotReleasable(f"{where} is {dp.NOT_PRIVATE}: its sampler and noise came from a known seed, so "
                            "rerunning the training tells which examples it was trained on; tune it with "
                            "tune.dp_randomness = 'secret' before handing it to a provider")
    if privacy.get("noise_multiplier") == 0:
        raise NotReleasable(f"{where} was trained without noise (sigma = 0): it has no DP guarantee")


def record_path(prompt_file: Path) -> Path:
    """The owner-side record of a prompt file: ``<prompt>.owner.json`` next to it."""
    return Path(prompt_file).with_suffix(".owner.json")


def read_record(prompt_file: Path) -> dict:
    """The owner's record of a prompt it tuned (curves, validation scores, cost, settings)."""
    path = record_path(prompt_file)
    if not path.exists():
        raise FileNotFoundError(f"{relative(path)} is missing: the owner's record of {relative(prompt_file)}, "
                                "written with it by 02")
    return read_json(path)


class SoftPrompt(nn.Module):
    """P trainable input embeddings (P x D) prepended to every example.

    ``meta`` travels with the weights (in the prompt file); ``record`` is the owner's and is saved next to it.
    The weights stay on the CPU whatever the model's device: ``next_token_logits`` moves them to the model (a
    step autograd follows), so optimiser steps, DP clipping and noise (from CPU generators), snapshots and files
    all happen on the CPU, and a prompt is a few thousand numbers, cheap to move.
    """

    def __init__(self, weight: torch.Tensor, record: dict | None = None, **meta: Any):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float().cpu())
        self.meta = {"length": weight.shape[0], "hidden_size": weight.shape[1], **meta}
        self.record = dict(record or {})

    @classmethod
    def from_text(cls, model, tokenizer, text: str, length: int, **meta: Any) -> "SoftPrompt":
        """Initialise from the embeddings of ``text``'s tokens, cycled or cut to ``length`` (Lester et al.)."""
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError("cannot initialise a prompt from empty text")
        ids = torch.tensor([ids[i % len(ids)] for i in range(length)])
        weight = model.get_input_embeddings().weight[ids]
        return cls(weight, model=model_name(model), init="text", init_text=text, **meta)

    @classmethod
    def from_vocab(cls, model, length: int, seed: int = 0, top: int = 5000, **meta: Any) -> "SoftPrompt":
        """Initialise from random rows among the first ``top`` vocabulary embeddings."""
        gen = torch.Generator().manual_seed(seed)
        table = model.get_input_embeddings().weight
        ids = torch.randint(0, min(top, table.shape[0]), (length,), generator=gen)
        return cls(table[ids], model=model_name(model), init="vocab", **meta)

    def check(self, model, same_model: bool = True) -> None:
        """Refuse a model whose width differs or (if ``same_model``) whose name differs from the prompt's."""
        width = model.get_input_embeddings().weight.shape[1]
        if self.meta["hidden_size"] != width:
            raise PromptMismatch(f"prompt has hidden size {self.meta['hidden_size']} but model "
                                 f"{model_name(model)!r} has {width}")
        if same_model and stable_name(str(self.meta.get("model"))) != model_name(model):
            raise PromptMismatch(f"prompt was made for {self.meta.get('model')!r}, not {model_name(model)!r} "
                                 "(pass same_model=False to paste it across models on purpose)")

    def digest(self) -> str:
        """Sixteen hex digits of SHA-256 over the weights: names this exact prompt, and tells no more than they do."""
        return hashlib.sha256(self.weight.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]

    def save(self, path: Path) -> Path:
        """Write the prompt file (weights and ``meta``) and, if there is one, the owner's record next to it.

        The record goes first: a prompt file on disk always has its record beside it. Weights that are not
        finite are refused: no command writes a prompt nobody could use.
        """
        if not torch.isfinite(self.weight).all():
            raise ValueError(f"refusing to write {relative(path)}: the prompt's weights hold NaN or inf")
        if self.record:
            write_json(record_path(path), self.record)
        with atomic_path(Path(path)) as tmp:
            torch.save({"weight": self.weight.detach().cpu(), "meta": self.meta}, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: Path, model=None, same_model: bool = True) -> "SoftPrompt":
        """Load a prompt file (never its owner-side record), checked (module docstring); with ``model`` given,
        check that it fits."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not (isinstance(state, dict) and isinstance(state.get("weight"), torch.Tensor)
                and isinstance(state.get("meta"), dict)):
            raise ValueError("not a prompt file: it holds no weight tensor and meta mapping")
        weight, meta = state["weight"], state["meta"]
        stated = (meta.get("length"), meta.get("hidden_size"))
        if tuple(weight.shape) != stated or not weight.is_floating_point():
            raise ValueError(f"its weights are {weight.dtype} of shape {tuple(weight.shape)}, but its metadata "
                             f"states {stated[0]} vectors of width {stated[1]}")
        if not torch.isfinite(weight).all():
            raise ValueError("its weights hold NaN or inf")
        check_claim(meta, relative(path))
        prompt = cls(weight)
        prompt.meta.update(meta)
        if model is not None:
            prompt.check(model, same_model)
        return prompt


@dataclass(frozen=True)
class Verbalizer:
    """Label-word token ids per class, padded to the same width; ``mask`` marks the real entries."""

    token_ids: torch.Tensor  # (C, W) long
    mask: torch.Tensor  # (C, W) float

    @classmethod
    def for_task(cls, task: Task, tokenizer) -> "Verbalizer":
        ids = []
        for words in task.label_words:
            row = []
            for word in words:
                tokens = tokenizer(word, add_special_tokens=False).input_ids
                if len(tokens) != 1:
                    raise ValueError(f"label word {word!r} of task {task.name!r} is {len(tokens)} tokens for "
                                     "this tokenizer; label words must be single tokens")
                row.append(tokens[0])
            ids.append(row)
        width = max(map(len, ids))
        token_ids = torch.tensor([row + [row[0]] * (width - len(row)) for row in ids])
        mask = torch.tensor([[1.0] * len(row) + [0.0] * (width - len(row)) for row in ids])
        return cls(token_ids, mask)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) next-token logits -> (B, C) class scores: the mean logit of each class's label words."""
        picked = logits[:, self.token_ids]  # (B, C, W)
        mask = self.mask.to(logits.device)
        return (picked * mask).sum(-1) / mask.sum(-1)


def shorten(texts: list[str], tokenizer, max_tokens: int) -> list[str]:
    """Cut each text to at most ``max_tokens`` tokens, so the template's cue is never truncated away."""
    if max_tokens <= 0 or not texts:
        return list(texts)
    ids = tokenizer(list(texts), add_special_tokens=False).input_ids
    return [t if len(i) <= max_tokens else tokenizer.decode(i[:max_tokens]) for t, i in zip(texts, ids)]


def encode(task: Task, tokenizer, texts: list[str], max_text_tokens: int = 64) -> dict[str, torch.Tensor]:
    """Template and tokenize a batch of texts, left-padded."""
    formatted = [task.format(t) for t in shorten(texts, tokenizer, max_text_tokens)]
    batch = tokenizer(formatted, padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def next_token_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) logits at the prediction position, with an optional soft prompt.

    ``prompt`` is (P, D), shared by the batch, or (B, P, D), one copy per example: with a per-example copy
    that requires grad, one backward pass gives each example's own gradient (exact per-sample gradients).
    """
    device = model.get_input_embeddings().weight.device  # batches are built on the CPU; the model may be on a GPU
    embeds = model.get_input_embeddings()(input_ids.to(device))
    mask = attention_mask.to(device)
    if prompt is not None:
        prompt = prompt.to(device)
        if prompt.dim() == 2:
            prompt = prompt.unsqueeze(0).expand(input_ids.shape[0], -1, -1)
        embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
        mask = torch.cat([mask.new_ones(prompt.shape[:2]), mask], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, logits_to_keep=1,
                use_cache=False)
    return out.logits[:, -1].float()


def grouped_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   prompt: torch.Tensor | None = None, size: int = GROUP_SIZE) -> torch.Tensor:
    """``next_token_logits`` of a training batch run in length-sorted groups of about ``size`` examples, each
    without the padding columns all its rows share: the same logits (positions come from the mask; up to the
    order of float sums) on fewer tokens. A random batch of texts of mixed lengths is ~45% padding."""
    groups = max(1, round(len(input_ids) / size))
    if groups == 1:
        return next_token_logits(model, input_ids, attention_mask, prompt)
    order = attention_mask.sum(1).argsort()
    parts = []
    for idx in order.chunk(groups):
        keep = attention_mask[idx].any(0)  # left padding: the columns every row of the group pads
        own = prompt if prompt is None or prompt.dim() == 2 else prompt[idx]
        parts.append(next_token_logits(model, input_ids[idx][:, keep], attention_mask[idx][:, keep], own))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return torch.cat(parts)[inverse]


@torch.inference_mode()
def prompt_class_scores(model, tokenizer, task: Task, texts: list[str], prompts: list[torch.Tensor | None],
                        batch_size: int = 32, max_text_tokens: int = 64, progress: bool = True,
                        cost: Cost | None = None, logits: bool = False) -> np.ndarray:
    """(K, N, C) class scores of every prompt (None: no prompt) on every text, or with ``logits`` the (K, N, V)
    next-token logits they are read from (the transfer compares whole-vocabulary distributions).

    Batches are length-sorted texts, so little is spent on padding, and each is tokenised once for all K
    prompts. Runs under the caller's autocast; ``cost`` counts every forward pass.
    """
    verbalizer = Verbalizer.for_task(task, tokenizer)
    order = np.argsort([len(t) for t in texts], kind="stable")
    width = model.get_output_embeddings().weight.shape[0] if logits else len(task.classes)
    out = np.zeros((len(prompts), len(texts), width), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc=f"score {task.name}", disable=not progress,
                      leave=False):
        idx = order[start:start + batch_size]
        batch = encode(task, tokenizer, [texts[i] for i in idx], max_text_tokens)
        for k, prompt in enumerate(prompts):
            read = next_token_logits(model, batch["input_ids"], batch["attention_mask"], prompt)
            out[k, idx] = (read if logits else verbalizer.scores(read)).cpu().numpy()
            if cost is not None:
                prompt_tokens = 0 if prompt is None else prompt.shape[-2] * len(idx)
                cost.add(model, int(batch["attention_mask"].sum()) + prompt_tokens, len(idx), "forward")
    return out
