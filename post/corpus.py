"""The public text distillation trains on: the provider's first stage reads nothing else.

Generic distillation packs the documents of a public pool into fixed-length token rows; read-out distillation
wraps public texts in each task's template (public: it travels with the prompt). Only the template comes from
a task, never its data.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import DistillConfig
from .declarations import load_hub_dataset
from .prompt import shorten
from .tasks import default_pool, get_task, public_sample, public_texts


# --- packed public text (the generic objective) --------------------------------------------------------------


def corpus_texts(pool: str, text_column: str = "text") -> list[str]:
    """Public documents: an offline pool of ``post.tasks`` (``news``) or ``hf:<dataset>[:<config>]``.

    A hub dataset is read from its ``train`` split by :func:`post.declarations.load_hub_dataset` (which honours
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


# --- public texts in a task's template (the read-out objectives) ---------------------------------------------


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
