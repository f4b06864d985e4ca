import torch

from post import models
from post.models import load_gguf, load_model, model_name


def test_cached_checkpoint_gives_the_same_logits_as_the_gguf_load(smol):
    cached, tok = smol
    fresh, fresh_tok = load_gguf("smollm2-135m-instruct")
    batch = tok(["Review: a quiet triumph\nSentiment:", "Question: Who wrote Hamlet ?\nAnswer type:"],
                padding=True, return_tensors="pt")
    assert fresh_tok(["Who wrote Hamlet ?"]).input_ids == tok(["Who wrote Hamlet ?"]).input_ids
    with torch.no_grad():
        assert torch.equal(cached(**batch).logits, fresh(**batch).logits)


def test_loaded_models_are_frozen_and_named(tiny, smol):
    for model, tok in (tiny, smol):
        assert not any(p.requires_grad for p in model.parameters())
        assert not model.training
        assert tok.padding_side == "left" and tok.pad_token is not None
    assert model_name(smol[0]) == "smollm2-135m-instruct"
    assert smol[0].config.num_hidden_layers == 30 and smol[0].config.hidden_size == 576


def test_local_directory_loads_under_a_repo_relative_name(tiny, tmp_path):
    from post.models import load

    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, _ = load(tmp_path / "m")
    assert model_name(loaded) == str((tmp_path / "m").resolve())
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_tiny_model_is_the_same_whatever_ran_before(monkeypatch):
    """Its weights come from its seed alone: a fresh checkout converts SmolLM2 (drawing random numbers) while
    loading the tiny model's tokenizer, and that must not change the tiny model (it did, and a test failed only
    on fresh checkouts); nor may loading it move the caller's random state."""
    torch.manual_seed(123)
    first = load_model("tiny-random-llama").state_dict()
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))
    real = models.load_tokenizer
    monkeypatch.setattr(models, "load_tokenizer", lambda name: torch.rand(1000) is None or real(name))
    again = load_model("tiny-random-llama").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
