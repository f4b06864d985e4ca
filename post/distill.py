"""Distil the source model: a few of the target's layers, trained on public text to imitate the target.

This is the provider's first stage and it reads public text only. The student keeps the target's embeddings,
final norm and LM head (frozen by default), so it shares the tokenizer and the embedding space: a soft prompt
tuned on the student lives in the target's input space.

Loss (DistilBERT-style, as in the paper), per token and averaged over every position of packed public text:
``a_ce * KL_T(teacher || student) * T^2 + a_lm * next-token cross-entropy + a_cos * (1 - cos(h_s, h_t))``.
The KL runs from the teacher's distribution to the student's (standard knowledge distillation: the student
is pushed to cover what the teacher predicts); ``h`` is the final hidden state (after the final norm).

The teacher's outputs on the fixed corpus are computed once and cached on disk, so epochs, reruns and resumed
runs never run the 30-layer teacher again. Because the student keeps the teacher's LM head, the cache can
store the teacher's final hidden states (D numbers per token) and recompute its exact logits (V numbers) with
one matmul; a top-k cache (k largest logits + log-normaliser, the rest of the vocabulary as one bucket) and
no cache at all (the teacher runs live) are the alternatives, compared in ``bench/distill_cache.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn
from tqdm.auto import tqdm

from .artifacts import artifact_dir, results_dir, source_model_dir, weights_whole, write_manifest
from .config import Config, DistillConfig
from .cost import Cost, n_params
from .files import atomic_dir, atomic_path, read_json, readable, relative, write_json
from .hardware import autocast as precision_autocast, resolve_device, resolve_precision
from .models import load_model, load_tokenizer
from .prompt import Verbalizer, shorten
from .release import check_releasable, load_release, release_dir, release_hash, verify, write_release
from .student import distill_hash, forward, layer_list, make_student, readout_key, student_layers, trainable
from .tasks import default_pool, get_task, load_hub_dataset, public_sample, public_texts

MAX_GRAD_NORM = 1.0
WARMUP = 0.05  # share of steps with a linear learning-rate warm-up; cosine decay to 10% after it


def autocast(dc: DistillConfig, device: torch.device):
    """bf16 autocast for the teacher's training targets and the student's training steps (``precision``).

    Held-out evaluation always runs in fp32, so agreement is measured against the exact target.
    """
    return precision_autocast(dc.precision, device.type, "distill.precision")


# --- the public corpus ---------------------------------------------------------------------------------------


def corpus_texts(pool: str, text_column: str = "text") -> list[str]:
    """Public documents: an offline pool of ``post.tasks`` (``news``) or ``hf:<dataset>[:<config>]``.

    A hub dataset is read from its ``train`` split by :func:`post.tasks.load_hub_dataset` (which honours
    ``POST_HUB_MIRROR``), as the hub tasks are.
    """
    if not pool.startswith("hf:"):
        return public_texts(pool)
    path, _, name = pool[3:].partition(":")
    data = load_hub_dataset(path, name or None, split="train")
    if text_column not in data.column_names:
        raise KeyError(f"{pool}: no column {text_column!r} (columns: {data.column_names}); set distill.text_column")
    return [t.strip() for t in data[text_column] if t and t.strip()]


def public_sequences(dc: DistillConfig, tokenizer, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) packed token sequences of length ``seq_len`` from disjoint public documents.

    Documents are shuffled with the seed, joined with the EOS token and cut into fixed-length rows; the first
    documents fill the held-out rows, the following ones the training rows, so no document is in both.
    """
    texts = corpus_texts(dc.public_pool, dc.text_column)
    order = np.random.default_rng(seed).permutation(len(texts))
    need = {"eval": dc.eval_sequences * dc.seq_len, "train": dc.train_sequences * dc.seq_len}
    out, stream, part = {}, [], "eval"
    for i in order:
        stream += tokenizer(texts[i], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if len(stream) >= need[part]:
            out[part] = torch.tensor(stream[:need[part]], dtype=torch.long).view(-1, dc.seq_len)
            if part == "train":
                return out["train"], out["eval"]
            stream, part = [], "train"
    raise ValueError(f"public pool {dc.public_pool!r} has too little text for {dc.eval_sequences} held-out and "
                     f"{dc.train_sequences} training sequences of {dc.seq_len} tokens")


# --- teacher outputs, computed once -------------------------------------------------------------------------


def teacher_key(cfg: Config) -> str:
    """Digest of what the teacher's cached outputs depend on (not the student settings)."""
    dc = cfg.distill
    fields = ("public_pool", "text_column", "seq_len", "train_sequences", "eval_sequences", "teacher_cache",
              "top_k", "temperature", "precision")
    teacher_side = DistillConfig(**{f: getattr(dc, f) for f in fields})
    return dataclasses.replace(cfg, distill=teacher_side).section_hash("distill")


def targets_from_logits(logits: torch.Tensor, hidden: torch.Tensor, dc: DistillConfig) -> dict:
    """The teacher targets the loss needs, in the cache's representation (full, or top-k + log-normaliser)."""
    if dc.teacher_cache != "topk":
        return {"logits": logits, "hidden": hidden}
    top = logits.topk(dc.top_k, dim=-1)
    return {"topk_logits": top.values, "topk_idx": top.indices,
            "lse": torch.logsumexp(logits.float() / dc.temperature, -1), "hidden": hidden}


class TeacherCache:
    """The teacher's outputs on the fixed sequences, in memory-mapped ``.npy`` files under ``directory``.

    Logits are the LM head applied to the final hidden state, so that hidden state (D numbers per token) is
    the teacher's whole output (V logits) in compact form: the cache keeps it in fp32 and recomputes the
    teacher's exact logits with a frozen copy of the teacher's head when they are needed (one matmul). Modes:
    ``hidden`` does that for the training rows; ``topk`` keeps the k largest logits and the log-normaliser
    instead (no matmul per step, but the KL sees the rest of the vocabulary as one bucket); ``none`` keeps
    only the held-out rows, and the teacher runs live at every training step. The cache is filled batch by
    batch with a progress record, so an interrupted fill resumes where it stopped.
    """

    def __init__(self, directory: Path, dc: DistillConfig, train_ids: torch.Tensor, eval_ids: torch.Tensor,
                 teacher):
        self.directory, self.dc = Path(directory), dc
        self.train_ids, self.eval_ids = train_ids, eval_ids
        self.head = copy.deepcopy(teacher.get_output_embeddings()).requires_grad_(False)
        n, s = train_ids.shape
        width = self.head.weight.shape[1]
        self.fields = {"eval_hidden": ((len(eval_ids), s, width), np.float32)}
        if dc.teacher_cache != "none":
            self.fields["hidden"] = ((n, s, width), np.float32)
        if dc.teacher_cache == "topk":
            self.fields.update(topk_logits=((n, s, dc.top_k), np.float32), topk_idx=((n, s, dc.top_k), np.int32),
                               lse=((n, s), np.float32))
        self.progress_path = self.directory / "progress.json"

    @property
    def progress(self) -> dict:
        if self.progress_path.exists():
            return read_json(self.progress_path)
        return {"train": 0, "eval": 0, "cost": Cost().to_dict()}

    @property
    def complete(self) -> bool:
        p = self.progress
        done_train = p["train"] == len(self.train_ids) or self.dc.teacher_cache == "none"
        return done_train and p["eval"] == len(self.eval_ids)

    def _arrays(self, mode: str) -> dict[str, np.ndarray]:
        return {name: np.lib.format.open_memmap(self.directory / f"{name}.npy", mode=mode,
                                                dtype=dtype, shape=shape if mode == "w+" else None)
                for name, (shape, dtype) in self.fields.items()}

    @torch.inference_mode()
    def fill(self, teacher, batch_size: int, progress: bool = True) -> Cost:
        """Run the teacher over the rows not cached yet; returns the cost of the whole fill (all sessions)."""
        p = self.progress
        fresh = not self.progress_path.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        arrays = self._arrays("w+" if fresh else "r+")
        cost = Cost(**p["cost"])
        parts = [("eval", self.eval_ids)]
        if self.dc.teacher_cache != "none":
            parts.append(("train", self.train_ids))
        todo = sum(len(ids) - p[part] for part, ids in parts)
        bar = tqdm(total=todo, desc="teacher outputs", unit="seq", disable=not progress or todo == 0)
        for part, ids in parts:
            for start in range(p[part], len(ids), batch_size):
                begin = time.perf_counter()
                batch = ids[start:start + batch_size]
                with autocast(self.dc, teacher.device) if part == "train" else nullcontext():
                    logits, hidden = forward(teacher, batch.to(teacher.device))
                values = {"eval_hidden": hidden} if part == "eval" else {"hidden": hidden}
                if part == "train" and self.dc.teacher_cache == "topk":
                    values = targets_from_logits(logits, hidden, self.dc)
                rows = slice(start, start + len(batch))
                for name, value in values.items():
                    value = value.float() if value.is_floating_point() else value  # numpy has no bf16
                    arrays[name][rows] = value.cpu().numpy().astype(self.fields[name][1])
                    arrays[name].flush()
                cost.add(teacher, batch.numel(), len(batch), "forward")
                cost.wall_seconds += time.perf_counter() - begin
                p = {**p, part: start + len(batch), "cost": cost.to_dict()}
                write_json(self.progress_path, p)
                bar.update(len(batch))
        bar.close()
        return cost

    def load(self) -> None:
        """Map the filled arrays read-only (rows are copied into memory one batch at a time)."""
        if not self.complete:
            raise RuntimeError(f"teacher cache {self.directory} is incomplete: call fill() first")
        self.arrays = self._arrays("r")

    def _rows(self, name: str, rows) -> torch.Tensor:
        return torch.from_numpy(np.array(self.arrays[name][rows])).to(self.head.weight.device)

    @torch.no_grad()
    def eval_logits(self, rows) -> torch.Tensor:
        """The teacher's exact logits on held-out rows ``rows``."""
        return self.head(self._rows("eval_hidden", rows))

    @torch.no_grad()
    def targets(self, rows: np.ndarray) -> dict:
        """Teacher targets for training rows ``rows``: hidden states plus full logits (or the top-k cache)."""
        hidden = self._rows("hidden", rows)
        if self.dc.teacher_cache != "topk":
            return {"hidden": hidden, "logits": self.head(hidden)}
        return {"hidden": hidden, "topk_logits": self._rows("topk_logits", rows),
                "topk_idx": self._rows("topk_idx", rows).long(), "lse": self._rows("lse", rows)}


# --- the loss ----------------------------------------------------------------------------------------------


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


# --- held-out agreement ----------------------------------------------------------------------------------


@torch.no_grad()
def top1_and_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[float, float]:
    """Summed over positions: top-1 agreement of the model (``log_q``) with the teacher (``log_p``), and
    KL(teacher || model); both given as log-probabilities at T = 1."""
    return (log_q.argmax(-1) == log_p.argmax(-1)).sum().item(), (log_p.exp() * (log_p - log_q)).sum().item()


@torch.no_grad()
def agreement(model, cache: TeacherCache, batch_size: int) -> dict[str, float]:
    """On held-out public text: top-1 next-token agreement with the teacher, KL(teacher || model) at T=1,
    and both models' next-token cross-entropy (nats per token). :func:`train` evaluates in eval mode."""
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


# --- read-out distillation: the target's answer where a task reads it -----------------------------------


def readout_texts(tasks: list[str], tokenizer, examples: int, holdout: int, max_text_tokens: int,
                  seed: int, pools: tuple[str, ...] = (), prefixes: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) public texts wrapped in each task's template: each task's default public pool, plus up to
    ``examples`` texts of each of ``pools`` (without the held-out texts of a task whose default pool it is), and
    each training text also cut before ``prefixes`` random words.

    Only the template (public, it travels with the prompt) comes from the task: never its data. A task
    family's source is made this way, one that answers like the target where the prompt will be read out. A
    prefix is a further read-out position of the same public text (how the target reads a review half-way), so
    a small pool yields more distinct targets; held-out texts are whole texts of the default pool only.
    """
    rng = np.random.default_rng(seed)
    defaults = {default_pool(name) for name in tasks}  # their first ``holdout`` texts are held out
    train, held = [], []
    for name in tasks:
        task = get_task(name)
        texts, held_out = public_sample(default_pool(name), examples, holdout, seed)
        for pool in pools:
            if pool != default_pool(name):
                texts += public_sample(pool, None, holdout if pool in defaults else 0, seed)[0][:examples]
        texts = shorten(texts, tokenizer, max_text_tokens)
        train += [task.format(t) for t in texts + text_prefixes(texts, tokenizer, prefixes, rng)]
        held += [task.format(t) for t in shorten(held_out, tokenizer, max_text_tokens)]
    return train, held


def text_prefixes(texts: list[str], tokenizer, per_text: int, rng: np.random.Generator,
                  shortest: int = 8) -> list[str]:
    """``per_text`` distinct prefixes of each text, cut before a random word (at least ``shortest`` tokens,
    never the whole text); texts too short for that many give fewer."""
    out = []
    for ids in tokenizer(texts, add_special_tokens=False).input_ids if per_text else []:
        cuts = np.array([c for c in range(shortest, len(ids)) if tokenizer.decode(ids[c:c + 1]).startswith(" ")])
        out += [tokenizer.decode(ids[:c]) for c in np.sort(rng.choice(cuts, min(per_text, len(cuts)), replace=False))]
    return out


def readout_hidden(model, texts: list[str], tokenizer,
                   layer: int | None = None) -> tuple[torch.Tensor, int, list[torch.Tensor] | None]:
    """(B, D) final hidden state at the read-out position (the last token) of ``texts``, left-padded, the
    number of text tokens processed (for the cost record), and with ``layer`` the hidden state entering decoder
    layer ``layer`` at every token of each text, one (tokens, D) tensor per text (None without ``layer``)."""
    batch = tokenizer(texts, padding=True, return_tensors="pt").to(model.device)
    mask = batch["attention_mask"]
    out = model.base_model(input_ids=batch["input_ids"], attention_mask=mask,
                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False,
                           output_hidden_states=layer is not None)
    inner = None if layer is None else [h[m] for h, m in zip(out.hidden_states[layer], mask.bool())]
    return out.last_hidden_state[:, -1], int(mask.sum()), inner


READOUT_CACHE = {"texts": list, "hidden": torch.Tensor, "layer": (int, type(None)), "inner": (list, type(None)),
                 "cost": dict}
CHECKPOINT = {"run_key": str, "model": dict, "optimizer": dict, "rng": torch.Tensor, "state": dict}


def _checked(saved, layout: dict) -> dict:
    """``saved`` if it is a dict with ``layout``'s keys holding those types; else ValueError, so that a cache or
    checkpoint of another shape is treated like a truncated one: a one-line warning, then made anew."""
    if not isinstance(saved, dict):
        raise ValueError(f"holds a {type(saved).__name__}, not a dict")
    wrong = [key for key, kind in layout.items() if not isinstance(saved.get(key), kind)]
    if wrong:
        raise ValueError(f"its {', '.join(wrong)} missing or of another type")
    return saved


@torch.inference_mode()
def teacher_readout(teacher, tokenizer, texts: list[str], batch_size: int, path: Path,
                    progress: bool = True) -> tuple[torch.Tensor, Cost]:
    """The teacher's read-out hidden states (N, D) on ``texts``, computed once and cached at ``path``."""
    hidden, _, cost = teacher_states(teacher, tokenizer, texts, None, batch_size, path, progress)
    return hidden, cost


@torch.inference_mode()
def teacher_states(teacher, tokenizer, texts: list[str], layer: int | None, batch_size: int, path: Path,
                   progress: bool = True) -> tuple[torch.Tensor, list[torch.Tensor] | None, Cost]:
    """The teacher's read-out hidden states (N, D) on ``texts`` and, with ``layer``, the hidden state entering
    that layer at every token of each text (N tensors of (tokens, D), kept in bf16: they are cosine targets),
    from one pass computed once and cached at ``path``."""
    saved = readable(path, lambda f: _checked(torch.load(f, weights_only=True), READOUT_CACHE))
    if saved is not None and saved["texts"] == texts and saved.get("layer") == layer:  # caches before layers: None
        return saved["hidden"], saved.get("inner"), Cost(**saved["cost"])
    cost, parts, inner = Cost(), [], None if layer is None else []
    for start in tqdm(range(0, len(texts), batch_size), desc="teacher read-outs", disable=not progress):
        begin = time.perf_counter()
        chunk = texts[start:start + batch_size]
        hidden, tokens, states = readout_hidden(teacher, chunk, tokenizer, layer)
        parts.append(hidden.float().cpu())
        if layer is not None:
            inner += [s.to(torch.bfloat16).cpu() for s in states]
        cost.add(teacher, tokens, len(chunk), "forward")
        cost.wall_seconds += time.perf_counter() - begin
    hidden = torch.cat(parts) if parts else torch.empty(0)
    with atomic_path(path) as tmp:
        torch.save({"texts": texts, "hidden": hidden, "layer": layer, "inner": inner, "cost": cost.to_dict()}, tmp)
    return hidden, inner, cost


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


# --- training with checkpoints ----------------------------------------------------------------------------


def learning_rate(step: int, total: int, lr: float) -> float:
    warm = max(1, round(WARMUP * total))
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return float(lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress))))  # a float: checkpoints hold plain data


def batch_rows(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of training step ``step``: a fresh seeded permutation each epoch (a pure function of the step)."""
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    return np.random.default_rng([seed, epoch]).permutation(n)[i * batch_size:(i + 1) * batch_size]


def batch_targets(cache: TeacherCache, rows: np.ndarray, ids: torch.Tensor, dc: DistillConfig,
                  teacher=None) -> dict:
    """The teacher's targets for training rows ``rows`` (token ids ``ids``): cached, or live (``none``)."""
    with torch.no_grad(), autocast(dc, ids.device):
        if dc.teacher_cache == "none":
            return dict(zip(("logits", "hidden"), forward(teacher, ids)))
        return cache.targets(rows)


class PackedText:
    """Generic distillation: every position of packed public text, with the DistilBERT-style loss.

    An objective tells :func:`train` how many training rows there are, the loss terms (with ``total``) and
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


def train_step(student, optimizer, params: list, objective, rows: np.ndarray) -> tuple[dict, int]:
    """One optimisation step on training rows ``rows``; returns the loss terms and the tokens processed."""
    losses, tokens = objective.losses(student, rows)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    return losses, tokens


def train(student, objective, dc: DistillConfig, seed: int, checkpoint: Path, run_key: str,
          progress: bool = True) -> dict:
    """Distil ``student`` in place on ``objective``; resumes from ``checkpoint`` if it belongs to the same run.

    Returns the history (per-step losses, held-out agreement every ``eval_every`` steps from step 0, the
    undistilled cut) and the costs of training and evaluation (a live teacher's passes count in training).
    """
    n = len(objective)
    if n < dc.batch_size:
        raise ValueError(f"{n} training rows are fewer than distill.batch_size ({dc.batch_size})")
    total = (n // dc.batch_size) * dc.epochs
    params = trainable(student, dc)
    optimizer = torch.optim.AdamW(params, lr=dc.lr)
    state = {"step": 0, "losses": [], "evals": [], "train_cost": Cost(), "eval_cost": Cost()}
    saved = readable(checkpoint, lambda f: _checked(torch.load(f, map_location="cpu", weights_only=True), CHECKPOINT))
    if saved is not None and saved["run_key"] == run_key:
        student.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        state = {**saved["state"], **{k: Cost(**saved["state"][k]) for k in ("train_cost", "eval_cost")}}
    student.train()

    def evaluate(step: int) -> dict:
        begin = time.perf_counter()
        was_training = student.training
        student.eval()
        metrics, tokens = objective.evaluate(student)
        student.train(was_training)
        state["evals"].append({"step": step, **metrics})
        state["eval_cost"].add(student, tokens, 0, "forward")
        state["eval_cost"].wall_seconds += time.perf_counter() - begin
        return state["evals"][-1]

    if state["step"] == 0 and not state["evals"]:
        evaluate(0)
    bar = tqdm(total=total, initial=state["step"], desc="distil", unit="step", disable=not progress)
    for step in range(state["step"], total):
        begin = time.perf_counter()
        rows = batch_rows(step, n, dc.batch_size, seed)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total, dc.lr)
        losses, tokens = train_step(student, optimizer, params, objective, rows)
        if objective.teacher is not None:
            state["train_cost"].add(objective.teacher, tokens, 0, "forward")
        state["train_cost"].add(student, tokens, len(rows), "full")
        state["train_cost"].wall_seconds += time.perf_counter() - begin
        state["losses"].append({"step": step + 1, "lr": optimizer.param_groups[0]["lr"],
                                **{k: v.item() for k, v in losses.items()}})
        state["step"] = step + 1
        if state["step"] == total and dc.train_layers:  # what a release stores (post.release): a source made
            with torch.no_grad():  # here and one rebuilt from its release are the same model
                for p in params:
                    p.copy_(p.to(torch.bfloat16))
        postfix = {"loss": f"{losses['total'].item():.3f}"}
        if state["step"] % dc.eval_every == 0 or state["step"] == total:
            postfix["top1"] = f"{evaluate(state['step'])['top1']:.3f}"
        bar.set_postfix(postfix)
        bar.update(1)
        if state["step"] % dc.checkpoint_every == 0 and state["step"] < total:
            save_checkpoint(checkpoint, run_key, student, optimizer, state)
    bar.close()
    student.eval().requires_grad_(False)
    return {"steps": total, "trainable_params": sum(p.numel() for p in params), "losses": state["losses"],
            "evals": state["evals"], "train_cost": state["train_cost"].to_dict(),
            "eval_cost": state["eval_cost"].to_dict()}


def save_checkpoint(path: Path, run_key: str, student, optimizer, state: dict) -> None:
    """Everything a resumed run needs to continue bit for bit: weights, optimizer, RNG, step, history."""
    with atomic_path(path) as tmp:
        costs = {k: state[k].to_dict() for k in ("train_cost", "eval_cost")}
        plain = json.loads(json.dumps({**state, **costs}, default=float))  # numbers only: it loads weights_only
        torch.save({"run_key": run_key, "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(), "state": plain}, tmp)


# --- the stage -------------------------------------------------------------------------------------------


def work_dir(profile: str) -> Path:
    """Teacher caches and the training checkpoint (``artifacts/<profile>/distill_work/``)."""
    return artifact_dir(profile, "distill_work")


def existing(cfg: Config) -> dict | None:
    """The record of a source model already distilled with these exact settings, else None."""
    directory = source_model_dir(cfg.profile)
    manifest = directory / "manifest.json"
    if (manifest.exists() and read_json(manifest).get("distill_hash") in (distill_hash(cfg), release_hash(cfg))
            and weights_whole(directory)):  # a model file cut short is made again, not kept
        return read_json(directory / "distill.json")
    return None


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


def distill_student(cfg: Config, teacher, tokenizer, work: Path, progress: bool = True) -> tuple[nn.Module, dict]:
    """Cut the student ``cfg.distill`` asks for out of ``teacher`` and distil it; returns it and its record.

    Teacher outputs and the resumable checkpoint live under ``work``; the checkpoint is removed when done.
    """
    dc = cfg.distill
    start = time.perf_counter()
    n_layers = len(layer_list(teacher)[1])
    layers = student_layers(dc, n_layers)
    student = make_student(teacher, layers)
    objective, teacher_cost = objective_for(cfg, teacher, tokenizer, work, progress)
    torch.manual_seed(cfg.seed)
    checkpoint = work / "checkpoint.pt"
    history = train(student, objective, dc, cfg.seed, checkpoint, distill_hash(cfg), progress)
    checkpoint.unlink(missing_ok=True)
    costs = {"teacher_outputs": teacher_cost.to_dict(), "train": history.pop("train_cost"),
             "eval": history.pop("eval_cost")}
    costs["total"] = sum((Cost(**c) for c in costs.values()), Cost()).to_dict()
    record = {
        "teacher": cfg.model, "teacher_layers": n_layers, "student_layers": list(layers),
        "student_params": n_params(student), "device": str(teacher.device), "objective": dc.objective,
        "precision": resolve_precision(dc.precision, teacher.device.type, "distill.precision"),
        "teacher_cache": dc.teacher_cache, "train_tokens": costs["train"]["tokens"], **history,
        **({"readout_pools": list(dc.readout_pools), "readout_prefixes": dc.readout_prefixes}
           if dc.objective != "generic" else {}),
        **({"train_layers": dc.train_layers} if dc.train_layers else {}),
        "before": history["evals"][0], "after": history["evals"][-1], "cost": costs,
        "session_wall_seconds": time.perf_counter() - start, "distill_hash": distill_hash(cfg),
    }
    return student, record


def run_distill(cfg: Config, progress: bool = True, release: bool = False) -> dict:
    """Make the source model of ``cfg.profile`` in ``artifacts/<profile>/source_model/``.

    Skips all work when that directory was made with the same distillation settings; rebuilds it from the
    profile's release (``sources/<profile>/``, :mod:`post.release`) when that was; otherwise distils, resuming
    an interrupted run. Writes the model, tokenizer, ``distill.json`` (history, before/after agreement, costs),
    ``cost.json`` and ``manifest.json`` there, copies the record to ``results/<profile>/distill.json`` and
    returns it. ``release``: also write the release (refused before distilling if it could not be written),
    unless the profile's release is already this source.
    """
    dc = cfg.distill
    autocast(dc, torch.device("cpu"))  # refuses an unknown precision before any work
    record = existing(cfg)
    if record is None:
        tokenizer = load_tokenizer(cfg.model)
        teacher = load_model(cfg.model, seed=cfg.seed).to(resolve_device(cfg.device))
        if release:
            check_releasable(make_student(teacher, student_layers(dc, len(layer_list(teacher)[1]))), cfg)
        rebuilt = load_release(cfg, teacher)
        if rebuilt is not None:
            student, record = rebuilt
        else:
            if (release_dir(cfg.profile) / "manifest.json").is_file():
                print(f"{relative(release_dir(cfg.profile))} was released with other distillation settings: "
                      "distilling")
            student, record = distill_student(cfg, teacher, tokenizer, work_dir(cfg.profile), progress)
        save_source_model(cfg, student, tokenizer, record,
                          **({"rebuilt_from": relative(release_dir(cfg.profile))} if rebuilt else {}))
    if release:
        if release_hash(cfg) == record["distill_hash"]:
            verify(cfg)
        else:
            write_release(cfg, load_model(str(source_model_dir(cfg.profile))), record)
    write_json(results_dir(cfg.profile) / "distill.json", record)
    return record


def save_source_model(cfg: Config, student, tokenizer, record: dict, **manifest) -> Path:
    """Write the student as a Hugging Face checkpoint with its records; it appears complete or not at all."""
    target = source_model_dir(cfg.profile)
    with atomic_dir(target) as tmp:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "distill.json", record)
        write_json(tmp / "cost.json", record["cost"])
        write_manifest(tmp, cfg, distill_hash=record["distill_hash"], student_layers=record["student_layers"],
                       cost=record["cost"]["total"], **manifest)
    return target
