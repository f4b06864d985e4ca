"""An exported adapter's files: ``post export`` writes a prompt for the target as a standard PEFT prompt-tuning
adapter with ``post.json`` beside it, and ``post inspect`` reads the two back.

The format lives here, apart from :mod:`post.cli`, which keeps the commands: what is written and what is read
back stay side by side. PEFT itself is imported by the export alone, so reading an adapter does not load it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import eps_tag
from .declarations import Task
from .files import atomic_dir
from .models import hub_id, model_name
from .prompt import check_release, provider_meta


def export_peft(prompt, model, task: Task, directory: Path, scoring: dict) -> Path:
    """Write ``prompt`` as a PEFT prompt-tuning adapter of ``model``, with ``post.json`` beside it: strict JSON
    holding the template and label words that turn next-token logits into class scores, ``scoring`` (what
    ``post evaluate`` scores with: texts cut to ``max_text_tokens``, its ``precision``) and the prompt's public
    facts (epsilon as text: "inf" without DP).

    ``peft.PeftModel.from_pretrained(model, directory)`` prepends the same vectors to every input, so the class
    scores of one text equal ours; in a left-padded batch they differ slightly (PEFT ignores position ids, and
    the model's default positions count the pads).
    """
    from peft import PromptTuningConfig, get_peft_model

    check_release(prompt.meta)  # an export is a release: a DP prompt whose guarantee does not hold stays home
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prompt.meta["length"],
                                token_dim=prompt.meta["hidden_size"])
    adapter = get_peft_model(model, config)
    # after wrapping: PEFT names the base model after the directory it was loaded from (our offline cache)
    adapter.active_peft_config.base_model_name_or_path = hub_id(model_name(model))
    with torch.no_grad():
        adapter.prompt_encoder[adapter.active_adapter].embedding.weight.copy_(prompt.weight)
    with atomic_dir(directory) as tmp:
        adapter.save_pretrained(tmp, save_embedding_layers=False)  # only the prompt: no look-up of the base
        info = {**provider_meta(prompt.meta), "epsilon": eps_tag(prompt.meta["epsilon"]), "classes": task.classes,
                "label_words": task.label_words, "instruction": task.instruction, "scoring": scoring}
        (tmp / "post.json").write_text(json.dumps(info, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return directory


def read_adapter(directory: Path) -> tuple[dict, dict]:
    """``adapter_config.json`` (PEFT's) and ``post.json`` (ours) of an exported adapter, each {} where missing."""
    return _json(directory / "adapter_config.json"), _json(directory / "post.json")


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
