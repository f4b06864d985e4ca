"""What the provider transfers with: the task as the provider knows it, a public sample of text, and every term
of the POST loss that the target prompt does not change, computed once per public text.

:mod:`post.transfer` trains the target prompt on what is made here; this module trains nothing. Each model runs
once over the public texts: both unprompted (:func:`unprompted`, shared by every source prompt of one task and
pool, and by the sweeps' variants), the prompted source, and, for the anchor term, the target with the source
prompt pasted on (:func:`public_data`). The provider boundary holds here as in the transfer: nothing accepts a
:class:`~post.tasks.Split` or labels, a task comes through :func:`provider_view` (its loader refuses) and text
through :func:`~post.tasks.public_sample`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .config import Config
from .cost import Cost, Timer
from .declarations import Task
from .prompt import SoftPrompt, Verbalizer, prompt_class_scores
from .tasks import default_pool, get_task, public_sample


class ProviderBoundary(PermissionError):
    """Provider-side code asked for the owner's private data."""


def provider_view(task: Task) -> Task:
    """The task as the provider knows it: name, template, label words and instruction; its loader refuses."""

    def refuse():
        raise ProviderBoundary(f"the provider may not load the private data of task {task.name!r}")

    return dataclasses.replace(task, load=refuse)


# --- the constant terms -------------------------------------------------------------------------------------


def all_logits(model, tokenizer, task: Task, texts: list[str], prompt: torch.Tensor | None = None,
               batch_size: int = 32, max_text_tokens: int = 64, cost: Cost | None = None) -> torch.Tensor:
    """(N, V) next-token logits at the prediction position, from the one scoring loop (``prompt_class_scores``)."""
    return torch.from_numpy(prompt_class_scores(model, tokenizer, task, texts, [prompt], batch_size, max_text_tokens,
                                                False, cost, logits=True)[0])


@dataclass
class Unprompted:
    """Both models' logits without a prompt: shared by every source prompt of one task and public sample."""

    texts: list[str]
    source: torch.Tensor  # (N, V) z_s(x)
    target: torch.Tensor  # (N, V) z_t(x)

    def subset(self, n: int) -> "Unprompted":
        """The first ``n`` texts (a smaller public sample: public_sample's samples are nested)."""
        if n > len(self.texts):
            raise ValueError(f"asked for {n} public examples, only {len(self.texts)} prepared")
        return Unprompted(self.texts[:n], self.source[:n], self.target[:n])


def unprompted(source, target, tokenizer, task: Task, texts: list[str], batch_size: int = 32,
               max_text_tokens: int = 64, cost: Cost | None = None) -> Unprompted:
    return Unprompted(texts, all_logits(source, tokenizer, task, texts, None, batch_size, max_text_tokens, cost),
                      all_logits(target, tokenizer, task, texts, None, batch_size, max_text_tokens, cost))


@dataclass
class PublicData:
    """Public texts and, per text, every term of the loss that the target prompt does not change."""

    texts: list[str]
    teacher: torch.Tensor  # (N, V) log P_s = log_softmax(z_s(x; p_s) / T)
    teacher_shift: torch.Tensor  # (N, V) log Q_s = log_softmax((z_s(x; p_s) - z_s(x)) / T)
    target_plain: torch.Tensor  # (N, V) z_t(x)
    agreement: float  # share of texts where the unprompted target picks the prompted source's class
    project: Callable[[torch.Tensor], torch.Tensor] | None = None  # "labels" space: logits -> class scores (V -> C)
    direct: torch.Tensor | None = None  # (N, V) log D_t = log_softmax(z_t(x; p_s) / T), made for the anchor term
    anchored: torch.Tensor | None = None  # (N,) 1 where the anchor holds the text, 0 where it lets go; None: all
    direct_agreement: float | None = None  # share of texts where Direct picks the prompted source's class

    def __len__(self) -> int:
        return len(self.texts)


def public_data(source, tokenizer, task: Task, source_prompt: SoftPrompt, plain: Unprompted,
                temperature: float = 2.0, batch_size: int = 32, max_text_tokens: int = 64,
                cost: Cost | None = None, space: str = "vocab", target=None, anchor_on: str = "all") -> PublicData:
    """Run the prompted source once over the texts and build the constant terms of the loss.

    ``space="vocab"`` compares distributions over the whole vocabulary (the paper); ``"labels"`` over the task's
    classes (the verbalizer's scores: label words are public facts that travel with the prompt), so the
    transfer spends nothing on matching tokens the task never reads. With ``target``, the target also runs
    once with the source prompt pasted on, for the anchor term (one more pass: only when the anchor is used), which
    holds every text (``anchor_on="all"``) or only those where Direct picks the prompted source's class ("agree").
    """
    prompted = all_logits(source, tokenizer, task, plain.texts, source_prompt.weight.detach(), batch_size,
                          max_text_tokens, cost)
    verbalizer = Verbalizer.for_task(task, tokenizer)
    source_picks = verbalizer.scores(prompted).argmax(1)
    agree = (source_picks == verbalizer.scores(plain.target).argmax(1)).float().mean()
    direct = anchored = direct_agreement = None
    if target is not None:
        direct = all_logits(target, tokenizer, task, plain.texts, source_prompt.weight.detach(), batch_size,
                            max_text_tokens, cost)
        agrees = (verbalizer.scores(direct).argmax(1) == source_picks).float()
        anchored, direct_agreement = agrees if anchor_on == "agree" else None, agrees.mean().item()
    project = verbalizer.scores if space == "labels" else None
    prompted, source_plain, target_plain = (project(z) if project else z
                                            for z in (prompted, plain.source, plain.target))
    if direct is not None:
        direct = F.log_softmax((project(direct) if project else direct) / temperature, -1)
    return PublicData(plain.texts, F.log_softmax(prompted / temperature, -1),
                      F.log_softmax((prompted - source_plain) / temperature, -1), target_plain, float(agree), project,
                      direct, anchored, direct_agreement)


def alpha_proxy(data: PublicData, num_classes: int) -> float:
    """A public-data stand-in for the paper's alpha rule: more weight on the shift when the target is good.

    The paper sets alpha from the target's zero-shot accuracy on the private task, which the provider cannot
    measure. Here the prompted source labels the public texts and alpha is the unprompted target's agreement
    with those labels above chance, ``(agreement - 1/C) / (1 - 1/C)``, clipped to [0, 1].
    """
    chance = 1.0 / num_classes
    return float(min(1.0, max(0.0, (data.agreement - chance) / (1 - chance))))


# --- a task's public samples, prepared once -----------------------------------------------------------------


@dataclass
class Prepared:
    """A task's public training and held-out samples with the unprompted logits of both models."""

    task: Task  # the provider's view
    pool: str
    train: Unprompted
    holdout: Unprompted
    cost: Cost


def public_pool(cfg: Config, task: str) -> str:
    """The pool the provider transfers ``task``'s prompts with: ``transfer.task_pools`` names it, else
    ``transfer.public_pool``, else the task's default."""
    return cfg.transfer.pools_by_task.get(task) or cfg.transfer.public_pool or default_pool(task)


def prepare(cfg: Config, source, target, tokenizer, task: str, pool: str = "", examples: int = 0) -> Prepared:
    s = cfg.transfer
    view = provider_view(get_task(task))
    pool = pool or public_pool(cfg, task)
    texts, held = public_sample(pool, examples or s.public_examples, s.holdout_examples, cfg.seed)
    cost = Cost()
    with Timer() as timer:
        train, holdout = (unprompted(source, target, tokenizer, view, x, cfg.eval.batch_size, s.max_text_tokens,
                                     cost) for x in (texts, held))
    cost.wall_seconds += timer.seconds
    return Prepared(view, pool, train, holdout, cost)
