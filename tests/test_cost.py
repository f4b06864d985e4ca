"""The cost model: per-layer parameters of the paper's models, and the projection to the paper's settings."""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from post.cost import GPT2_XL, LLAMA2_7B, Architecture, Workload, projected_costs
from post.models import TINY, load_model


@pytest.mark.parametrize("architecture, config", [
    (GPT2_XL, GPT2Config(n_layer=48, n_embd=1600, n_head=25)),
    (LLAMA2_7B, LlamaConfig(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, vocab_size=32000)),
])
def test_paper_architectures_match_transformers(architecture, config):
    with torch.device("meta"):  # shapes only: no memory for billions of parameters
        model = AutoModelForCausalLM.from_config(config)
    assert Architecture.of(model, architecture.name) == architecture


def test_forward_flops_count_layers_per_token_and_the_head_per_example():
    model = load_model(TINY)
    arch = Architecture.of(model)
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert arch.layer_params == per_layer and arch.layers == model.config.num_hidden_layers
    assert arch.forward_flops(10, 2) == 2 * arch.layers * per_layer * 10 + 2 * arch.width * arch.vocab * 2
    assert arch.forward_flops(10, 2, layers=1) < arch.forward_flops(10, 2)


def test_projection_adds_up_and_moves_with_the_settings():
    costs = projected_costs(GPT2_XL, 4)
    assert costs["post"] == costs["compt"] + costs["transfer"]
    assert costs["ratio"] == pytest.approx(costs["fullpt"] / costs["post"])
    assert costs["compt"] < costs["fullpt"] / 10  # 4 of 48 layers
    shorter = projected_costs(GPT2_XL, 4, dataclasses.replace(Workload(), transfer_steps=600, public_examples=600 * 64))
    assert shorter["ratio"] > costs["ratio"] and shorter["fullpt"] == costs["fullpt"]
    assert projected_costs(GPT2_XL, 48)["compt"] == costs["fullpt"]
