"""What the teacher hands distillation: its outputs on the public text, computed once and cached on disk.

Epochs, reruns and resumed runs never run the 30-layer teacher again. Because the student keeps the teacher's
LM head, the cache can store the teacher's final hidden states (D numbers per token) and recompute its exact
logits (V numbers) with one matmul; a top-k cache (k largest logits + log-normaliser, the rest of the vocabulary
as one bucket) and no cache at all (the teacher runs live) are the alternatives, compared in
``bench/distill_cache.py``. The read-out objectives cache the teacher's hidden state where a task reads its
answer (and, for ``readout+hidden``, the states entering the kept last layers) the same way. Every cache loads
``weights_only`` and is checked for its layout, so a file of another shape is made anew, never trusted.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Config, DistillConfig
from .cost import Cost
from .files import atomic_path, read_json, write_json
from .hardware import autocast as precision_autocast
from .reuse import reuse
from .student import forward


def autocast(dc: DistillConfig, device: torch.device):
    """bf16 autocast for the teacher's training targets and the student's training steps (``precision``).

    Held-out evaluation always runs in fp32, so agreement is measured against the exact target.
    """
    return precision_autocast(dc.precision, device.type, "distill.precision")


def checked(saved, layout: dict) -> dict:
    """``saved`` if it is a dict with ``layout``'s keys holding those types; else ValueError, so that a cache or
    checkpoint of another shape is treated like a truncated one: a one-line warning, then made anew."""
    if not isinstance(saved, dict):
        raise ValueError(f"holds a {type(saved).__name__}, not a dict")
    wrong = [key for key, kind in layout.items() if not isinstance(saved.get(key), kind)]
    if wrong:
        raise ValueError(f"its {', '.join(wrong)} missing or of another type")
    return saved


# --- packed public text: the teacher's outputs at every token ------------------------------------------------


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


# --- read-outs: the teacher's state where a task reads its answer --------------------------------------------


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
    def cached(f: Path) -> dict | None:  # made on these texts at this layer (caches made before layers: None)
        saved = checked(torch.load(f, weights_only=True), READOUT_CACHE)
        return saved if saved["texts"] == texts and saved.get("layer") == layer else None

    def computed() -> dict:
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
        return {"texts": texts, "hidden": hidden, "layer": layer, "inner": inner, "cost": cost.to_dict()}

    def save(made: dict, f: Path) -> None:
        with atomic_path(f) as tmp:
            torch.save(made, tmp)

    made = reuse(path, cached, computed, save)
    return made["hidden"], made.get("inner"), Cost(**made["cost"])
