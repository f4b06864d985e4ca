"""The source model's shape and identity: which of the target's layers a student keeps and trains, and the key of
the settings that make it.

A student is the teacher cut to some of its decoder layers (found generically: the one layer list of a
decoder-only causal LM), with its embeddings and LM head; distillation (``post.distill``) trains it and a
release (``post.release``) ships what it trained. Both, and the cost model (``post.cost``), read the shape
here, so none of them imports another for it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .config import Config, DistillConfig
from .reuse import content_key


class UnsupportedModel(ValueError):
    """A model whose decoder layers cannot be located and sliced into a student."""



def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder's list of layers, found generically: the one ModuleList with ``num_hidden_layers`` blocks.

    That covers Llama (``model.layers``), Qwen, Mistral, GPT-2 (``transformer.h``), GPT-NeoX and most other
    decoder-only causal LMs without a per-architecture table.
    """
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModel(f"{type(model).__name__} is an encoder-decoder model; only decoder-only causal "
                               "LMs can be cut into a student")
    n = getattr(config, "num_hidden_layers", None)
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and n and len(m) == n and len({type(b) for b in m}) == 1]
    if len(found) != 1 or model.get_output_embeddings() is None:
        raise UnsupportedModel(
            f"cannot locate a single decoder layer list in {type(model).__name__} (config.num_hidden_layers="
            f"{n}, candidates: {[name for name, _ in found]}); supported: decoder-only causal LMs such as "
            "Llama/SmolLM2, Qwen, Mistral and GPT-2")
    return found[0]


def default_layers(n_layers: int, k: int) -> tuple[int, ...]:
    """First and last layer plus evenly spaced ones in between: ``k`` indices out of ``n_layers``."""
    if not 1 <= k <= n_layers:
        raise ValueError(f"num_student_layers must be between 1 and {n_layers}, got {k}")
    return tuple(int(i) for i in np.unique(np.linspace(0, n_layers - 1, k).round().astype(int)))


def end_layers(n_layers: int, k: int, last: int) -> tuple[int, ...]:
    """Contiguous blocks at both ends: the first ``k - last`` layers and the last ``last`` (the paper's sources).

    The first layers turn embeddings into the residual stream the rest expects and the last ones turn it into
    next-token predictions; keeping both blocks intact leaves distillation only the missing middle to heal.
    """
    if not 1 <= last < k <= n_layers:
        raise ValueError(f"need 1 <= keep_last < num_student_layers <= {n_layers}, got keep_last={last} and "
                         f"num_student_layers={k}")
    return tuple(range(k - last)) + tuple(range(n_layers - last, n_layers))


def check_layers(layers, n_layers: int) -> tuple[int, ...]:
    """Refuse an empty, out-of-range, repeated or unordered ``student_layers``."""
    layers = tuple(layers)
    if not layers:
        raise ValueError("student_layers is empty: a student needs at least one of the teacher's layers")
    bad = [i for i in layers if not (isinstance(i, (int, np.integer)) and 0 <= i < n_layers)]
    if bad:
        raise ValueError(f"student_layers {list(layers)}: {bad} out of range; the teacher has layers 0..{n_layers - 1}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"student_layers {list(layers)} repeats a layer; each teacher layer can be used once")
    if list(layers) != sorted(layers):
        raise ValueError(f"student_layers {list(layers)} must be increasing (the layers keep their order)")
    return tuple(int(i) for i in layers)


def student_layers(dc: DistillConfig, n_layers: int) -> tuple[int, ...]:
    """The layers a config asks for: explicit ``student_layers``, else ``num_student_layers`` cut as contiguous
    ends (``keep_last`` > 0) or spread evenly (``keep_last`` = 0)."""
    if dc.student_layers:
        return check_layers(dc.student_layers, n_layers)
    if dc.keep_last:
        return end_layers(n_layers, dc.num_student_layers, dc.keep_last)
    return default_layers(n_layers, dc.num_student_layers)


def forward(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, final hidden state) of a causal LM on unpadded ``input_ids``, both (B, S, .)."""
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
    return model.get_output_embeddings()(hidden), hidden


def make_student(teacher, layers) -> nn.Module:
    """A model of the teacher's class with only ``layers`` (teacher indices), everything else copied.

    The student is built from a config with fewer layers (so per-layer indices such as the KV-cache slot are
    right) and loaded with the teacher's weights, renaming layer ``layers[i]`` to ``i``.
    """
    prefix, blocks = layer_list(teacher)
    layers = check_layers(layers, len(blocks))
    ids = torch.arange(3, dtype=torch.long, device=teacher.device).unsqueeze(0)
    with torch.no_grad():  # refuse heads that post-process logits (e.g. soft-capping): forward() would differ
        if not torch.allclose(forward(teacher, ids)[0], teacher(input_ids=ids, use_cache=False).logits):
            raise UnsupportedModel(f"{type(teacher).__name__} computes its logits with more than the output "
                                   "embedding; it cannot be distilled by this code")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in layers]
    student = type(teacher)(config).to(device=teacher.device, dtype=teacher.dtype)
    source = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1:].split(".", 1)
            key_t = f"{prefix}.{layers[int(index)]}.{rest}"
        else:
            key_t = key
        state[key] = source[key_t]
    student.load_state_dict(state, strict=True)
    student.post_name = f"{getattr(teacher, 'post_name', teacher.config.name_or_path)}[layers {list(layers)}]"
    return student.eval().requires_grad_(False)


def trainable(student, dc: DistillConfig) -> list[nn.Parameter]:
    """Turn on gradients for what distillation trains; embeddings and LM head stay frozen unless asked.

    With ``train_layers`` only the top layers (and what sits above them, the final norm) learn: the layers
    below and every embedding table (token and, e.g. GPT-2's, position) stay exact copies of the target's, so
    the source is the target plus a few trained layers (what a provider ships, ``post.release``) and, unless
    ``train_embeddings``, the backward pass stops where those layers begin.
    """
    student.requires_grad_(True)
    if not dc.train_embeddings:
        student.get_input_embeddings().requires_grad_(False)
        student.get_output_embeddings().requires_grad_(False)
    blocks = layer_list(student)[1]
    if not 0 <= dc.train_layers <= len(blocks):
        raise ValueError(f"distill.train_layers must be between 0 (all) and the student's {len(blocks)} layers, "
                         f"got {dc.train_layers}")
    if dc.train_layers:
        for block in blocks[:len(blocks) - dc.train_layers]:
            block.requires_grad_(False)
        if not dc.train_embeddings:
            for module in student.modules():
                if isinstance(module, nn.Embedding):
                    module.requires_grad_(False)
    return [p for p in student.parameters() if p.requires_grad]


# --- the key of a source: what a distilled (or released) source depends on ---------------------------------


def readout_key(cfg: Config) -> str:
    """Digest of what the teacher's read-outs depend on: tasks, public sample, text length, seed, model."""
    dc = cfg.distill
    payload = {"model": cfg.model, "seed": cfg.seed, "tasks": list(cfg.data.tasks), "examples": dc.readout_examples,
               "holdout": dc.readout_holdout, "max_text_tokens": cfg.data.max_text_tokens}
    if dc.readout_pools or dc.readout_prefixes:  # the keys of read-outs made before these settings stay valid
        payload.update(pools=list(dc.readout_pools), prefixes=dc.readout_prefixes)
    return content_key(payload)


def distill_hash(cfg: Config) -> str:
    """What a distilled source depends on: the distill settings, and for read-outs the tasks' public sample."""
    key = cfg.section_hash("distill")
    return f"{key}-{readout_key(cfg)}" if cfg.distill.objective != "generic" else key
