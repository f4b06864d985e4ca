import torch

from post.models import load_gguf, model_name


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
