"""What the student is trained to match: the objectives of distillation, their losses and held-out agreement.

The generic objective (:class:`PackedText`; DistilBERT-style, as in the paper), per token and averaged over
every position of packed public text:
``a_ce * KL_T(teacher || student) * T^2 + a_lm * next-token cross-entropy + a_cos * (1 - cos(h_s, h_t))``.
The KL runs from the teacher's distribution to the student's (standard knowledge distillation: the student
is pushed to cover what the teacher predicts); ``h`` is the final hidden state (after the final norm). The
read-out objectives (:class:`Readout`) match the teacher only where a task's prompt is read out.
:func:`objective_for` builds the configured one over the teacher's cached outputs (``post.teacher_outputs``);
``post.distill`` trains on it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from .config import Config, DistillConfig
from .corpus import public_sequences, readout_texts
from .prompt import Verbalizer
from .student import forward, layer_list, readout_key
from .tasks import get_task
from .teacher_outputs import TeacherCache, autocast, readout_hidden, teacher_key, teacher_states


# --- the loss ------------------------------------------------------------------------------------------------


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def kd_kl(student_logits: torch.Tensor, target: dict, temperature: float) -> torch.Tensor:
    """Mean per-token KL(teacher_T || student_T) * T^2, from full teacher logits or its top-k cache."""
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, -1)
    if "logits" in target:
        log_p = F.log_softmax(target["logits"].float() / t, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    else:
        log_p = target["topk_logits"] / t - target["lse"].unsqueeze(-1)
        log_qk = log_q.gather(-1, target["topk_idx"])
        p = log_p.exp()
        p_rest = (1 - p.sum(-1)).clamp(min=0)
        kl = (p * (log_p - log_qk)).sum(-1)
        kl = kl + torch.xlogy(p_rest, p_rest) - p_rest * _log1mexp(torch.logsumexp(log_qk, -1))
    return kl.mean() * t * t


def distill_loss(student_logits: torch.Tensor, student_hidden: torch.Tensor, input_ids: torch.Tensor,
                 target: dict, dc: DistillConfig) -> dict[str, torch.Tensor]:
    """The three terms and their weighted total (``total``) for one batch of packed sequences."""
    kl = kd_kl(student_logits, target, dc.temperature)
    lm = F.cross_entropy(student_logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())
    cos = 1 - F.cosine_similarity(student_hidden.float(), target["hidden"].float(), dim=-1).mean()
    return {"total": dc.a_ce * kl + dc.a_lm * lm + dc.a_cos * cos, "kl": kl, "lm": lm, "cos": cos}


# --- held-out agreement --------------------------------------------------------------------------------------


@torch.no_grad()
def top1_and_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[float, float]:
    """Summed over positions: top-1 agreement of the model (``log_q``) with the teacher (``log_p``), and
    KL(teacher || model); both given as log-probabilities at T = 1."""
    return (log_q.argmax(-1) == log_p.argmax(-1)).sum().item(), (log_p.exp() * (log_p - log_q)).sum().item()


@torch.no_grad()
def agreement(model, cache: TeacherCache, batch_size: int) -> dict[str, float]:
    """On held-out public text: top-1 next-token agreement with the teacher, KL(teacher || model) at T=1,
    and both models' next-token cross-entropy (nats per token). :func:`post.distill.train` evaluates in eval mode."""
    ids_all = cache.eval_ids
    sums = {"top1": 0.0, "kl": 0.0, "nll": 0.0, "teacher_nll": 0.0}
    for start in range(0, len(ids_all), batch_size):
        ids = ids_all[start:start + batch_size]
        log_q = F.log_softmax(forward(model, ids.to(model.device))[0].float().cpu(), -1)
        log_p = F.log_softmax(cache.eval_logits(slice(start, start + len(ids))).float().cpu(), -1)
        top1, kl = top1_and_kl(log_p, log_q)
        sums["top1"] += top1
        sums["kl"] += kl
        for name, lp in (("nll", log_q), ("teacher_nll", log_p)):
            sums[name] -= lp[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).sum().item()
    n = ids_all.numel()
    return {"top1": sums["top1"] / n, "kl": sums["kl"] / n, "nll": sums["nll"] / (n - len(ids_all)),
            "teacher_nll": sums["teacher_nll"] / (n - len(ids_all))}


# --- the generic objective: every position of packed public text ---------------------------------------------


def batch_targets(cache: TeacherCache, rows: np.ndarray, ids: torch.Tensor, dc: DistillConfig,
                  teacher=None) -> dict:
    """The teacher's targets for training rows ``rows`` (token ids ``ids``): cached, or live (``none``)."""
    with torch.no_grad(), autocast(dc, ids.device):
        if dc.teacher_cache == "none":
            return dict(zip(("logits", "hidden"), forward(teacher, ids)))
        return cache.targets(rows)


class PackedText:
    """Generic distillation: every position of packed public text, with the DistilBERT-style loss.

    An objective tells :func:`post.distill.train` how many training rows there are, the loss terms (with ``total``) and
    tokens of a batch of rows, and the held-out agreement; ``teacher`` is set when it runs live at every step.
    """

    def __init__(self, cache: TeacherCache, dc: DistillConfig, teacher=None):
        self.cache, self.dc = cache, dc
        self.teacher = teacher if dc.teacher_cache == "none" else None

    def __len__(self) -> int:
        return len(self.cache.train_ids)

    def losses(self, student, rows: np.ndarray) -> tuple[dict, int]:
        ids = self.cache.train_ids[torch.from_numpy(rows)].to(student.device)
        target = batch_targets(self.cache, rows, ids, self.dc, self.teacher)
        with autocast(self.dc, ids.device):
            logits, hidden = forward(student, ids)
        return distill_loss(logits, hidden, ids, target, self.dc), ids.numel()

    def evaluate(self, student) -> tuple[dict, int]:
        return agreement(student, self.cache, self.dc.batch_size), self.cache.eval_ids.numel()


# --- read-out distillation: the target's answer where a task reads it ----------------------------------------


class Readout:
    """Read-out distillation: T^2 KL(teacher_T || student_T) over the whole vocabulary at the read-out position.

    The student shares the teacher's LM head, so the teacher's read-out is stored as its final hidden state
    and its logits are one matmul away. Held-out: top-1 next-token agreement and KL at T = 1 there.

    With ``inner`` = (the teacher's states, student layer) it is the ``readout+hidden`` objective: the loss adds
    ``a_cos * (1 - cos)`` between the hidden state entering the student's kept last layers and the teacher's
    entering the same layers, at every token of the text (offsite-tuning's emulator loss). Those layers are
    the teacher's own, so a front that hands them the teacher's residual stream everywhere, not only where the
    answer is read, leaves them less to make up for. Held-out agreement stays the read-out's in both.

    With ``verbalizers`` (one per task; the held-out texts are the tasks' equal shares, in order) the held-out
    metrics add ``label_rank``: how alike the student orders the held-out texts by each class's log-probability
    over the task's label words as the teacher does (Spearman, averaged over every task's classes). The owner's
    prompt is tuned on the student's ordering, so this is a label-free, public proxy for what it can carry.
    """

    teacher = None  # read-outs are always cached

    def __init__(self, tokenizer, head, dc: DistillConfig, train: tuple[list[str], torch.Tensor],
                 held: tuple[list[str], torch.Tensor], inner: tuple[list[torch.Tensor], int] | None = None,
                 verbalizers: list[Verbalizer] | None = None):
        self.tokenizer, self.head, self.dc, self.verbalizers = tokenizer, head, dc, verbalizers or []
        (self.texts, self.hidden), (self.held_texts, self.held_hidden) = train, held
        self.inner, self.layer = inner or (None, None)

    def __len__(self) -> int:
        return len(self.texts)

    def _logits(self, model, texts: list[str],
                layer: int | None = None) -> tuple[torch.Tensor, int, list[torch.Tensor] | None]:
        hidden, tokens, states = readout_hidden(model, texts, self.tokenizer, layer)
        return self.head(hidden), tokens, states

    def losses(self, student, rows: np.ndarray) -> tuple[dict, int]:
        with autocast(self.dc, student.device):
            logits, tokens, states = self._logits(student, [self.texts[i] for i in rows], self.layer)
        with torch.no_grad():
            target = self.head(self.hidden[torch.from_numpy(rows)].to(student.device))
        kl = kd_kl(logits, {"logits": target}, self.dc.temperature)
        if self.inner is None:
            return {"total": kl, "kl": kl}, tokens
        want = torch.cat([self.inner[i] for i in rows]).to(student.device).float()
        cos = 1 - F.cosine_similarity(torch.cat(states).float(), want, dim=-1).mean()
        return {"total": kl + self.dc.a_cos * cos, "kl": kl, "cos": cos}, tokens

    @torch.no_grad()
    def evaluate(self, student) -> tuple[dict, int]:
        sums, pairs = np.zeros(3), []  # top-1 agreements, KL, tokens; (teacher, student) logits for label_rank
        for start in range(0, len(self.held_texts), self.dc.batch_size):
            logits, tokens, _ = self._logits(student, self.held_texts[start:start + self.dc.batch_size])
            teacher = self.head(self.held_hidden[start:start + len(logits)].to(student.device))
            sums += (*top1_and_kl(F.log_softmax(teacher.float(), -1), F.log_softmax(logits.float(), -1)), tokens)
            pairs += [(teacher.float().cpu(), logits.float().cpu())] if self.verbalizers else []
        n = len(self.held_texts)
        metrics = {"top1": float(sums[0] / n), "kl": float(sums[1] / n)}
        if self.verbalizers:
            teacher, logits = (torch.cat(x) for x in zip(*pairs))
            metrics["label_rank"] = label_rank(teacher, logits, self.verbalizers)
        return metrics, int(sums[2])


def label_rank(teacher: torch.Tensor, student: torch.Tensor, verbalizers: list[Verbalizer]) -> float:
    """Mean Spearman correlation between teacher and student class log-probabilities (over each task's label
    words) across texts, over every (task, class) pair whose scores are not constant (NaN if none); rows are
    the tasks' equal shares in ``verbalizers`` order."""
    share, ranks = len(teacher) // len(verbalizers), []
    if share * len(verbalizers) != len(teacher):
        raise ValueError(f"{len(teacher)} held-out rows are not equal shares of {len(verbalizers)} tasks")
    for i, verbalizer in enumerate(verbalizers):
        rows = slice(i * share, (i + 1) * share)
        t, s = (F.log_softmax(verbalizer.scores(x[rows]), -1).numpy() for x in (teacher, student))
        ranks += [spearmanr(t[:, c], s[:, c]).statistic for c in range(t.shape[1])
                  if np.ptp(t[:, c]) and np.ptp(s[:, c])]
    return float(np.mean(ranks)) if ranks else float("nan")


# --- the configured objective --------------------------------------------------------------------------------


def objective_for(cfg: Config, teacher, tokenizer, work: Path, progress: bool = True):
    """The configured objective over public text, with the teacher's outputs cached under ``work``;
    returns it and the cost of the teacher's passes."""
    dc = cfg.distill
    if dc.objective in ("readout", "readout+hidden"):
        train_texts, held_texts = readout_texts(list(cfg.data.tasks), tokenizer, dc.readout_examples,
                                                dc.readout_holdout, cfg.data.max_text_tokens, cfg.seed,
                                                dc.readout_pools, dc.readout_prefixes)
        texts, n = train_texts + held_texts, len(train_texts)
        layer = None  # "readout+hidden": also the states entering the teacher's kept last layers
        if dc.objective == "readout+hidden":
            if not dc.keep_last or dc.student_layers:
                raise ValueError("distill.objective 'readout+hidden' matches the hidden state entering the kept "
                                 "last layers: set distill.keep_last > 0 and no explicit student_layers")
            layer = len(layer_list(teacher)[1]) - dc.keep_last
        name = f"readout-{readout_key(cfg)}" + (f"-layer{layer}" if layer is not None else "")
        hidden, inner, cost = teacher_states(teacher, tokenizer, texts, layer, dc.batch_size, work / f"{name}.pt",
                                             progress)
        head = copy.deepcopy(teacher.get_output_embeddings()).requires_grad_(False)
        verbalizers = [Verbalizer.for_task(get_task(task), tokenizer) for task in cfg.data.tasks]
        return Readout(tokenizer, head, dc, (train_texts, hidden[:n]), (held_texts, hidden[n:]),
                       None if layer is None else (inner[:n], dc.num_student_layers - dc.keep_last),
                       verbalizers), cost
    train_ids, eval_ids = public_sequences(dc, tokenizer, cfg.seed)
    cache = TeacherCache(work / f"teacher-{teacher_key(cfg)}", dc, train_ids, eval_ids, teacher)
    cost = cache.fill(teacher, dc.batch_size, progress)
    cache.load()
    return PackedText(cache, dc, teacher), cost
