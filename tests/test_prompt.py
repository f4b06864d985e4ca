import math

import numpy as np
import pytest
import torch

from post import dp
from post.cost import Cost
from post.prompt import (PROVIDER_DP_KEYS, PROVIDER_KEYS, NotReleasable, PromptMismatch, SoftPrompt, Verbalizer,
                         check_release, encode, next_token_logits, prompt_class_scores, provider_meta, read_record,
                         record_path)
from post.tasks import get_task

TASK = get_task("rotten_tomatoes")
SHORT = "Fine."
LONGER = ["A long, winding and ultimately rewarding film about memory, family and the sea, told with patience.",
          "Terrible.", "It is neither as clever nor as funny as it thinks it is, but the cast is game."]


def scores(model, tok, texts, prompt=None):
    batch = encode(TASK, tok, texts)
    with torch.no_grad():
        logits = next_token_logits(model, batch["input_ids"], batch["attention_mask"], prompt)
    return Verbalizer.for_task(TASK, tok).scores(logits)


@pytest.mark.parametrize("model_fixture", ["tiny", "smol"])
@pytest.mark.parametrize("with_prompt", [False, True])
def test_batch_invariance(request, model_fixture, with_prompt):
    """An example's class scores do not depend on what it is batched (and left-padded) with."""
    model, tok = request.getfixturevalue(model_fixture)
    prompt = SoftPrompt.from_text(model, tok, TASK.instruction, 6).weight if with_prompt else None
    alone = scores(model, tok, [SHORT], prompt)[0]
    batch = encode(TASK, tok, [SHORT] + LONGER)
    assert (batch["attention_mask"][0] == 0).any(), "the short example must actually be padded"
    batched = scores(model, tok, [SHORT] + LONGER, prompt)[0]
    assert (alone - batched).abs().max() < 1e-4


def test_prompt_changes_the_scores(tiny):
    model, tok = tiny
    prompt = SoftPrompt.from_vocab(model, 4, seed=1).weight
    assert (scores(model, tok, [SHORT], prompt) - scores(model, tok, [SHORT])).abs().max() > 1e-4


def test_per_example_prompt_copy_matches_shared_prompt(tiny):
    model, tok = tiny
    prompt = SoftPrompt.from_text(model, tok, TASK.instruction, 5).weight
    shared = scores(model, tok, LONGER, prompt)
    copied = scores(model, tok, LONGER, prompt.unsqueeze(0).repeat(len(LONGER), 1, 1))
    assert torch.allclose(shared, copied)


def by_hand(model, tok, text, prompt=None):
    """Class scores of one text built without the library: unpadded, default positions, the mean label-word logit."""
    ids = tok(TASK.format(text), return_tensors="pt").input_ids
    embeds = model.get_input_embeddings()(ids)
    if prompt is not None:
        embeds = torch.cat([prompt.unsqueeze(0), embeds], dim=1)
    with torch.no_grad():
        last = model(inputs_embeds=embeds).logits[0, -1]
    return np.array([float(last[[tok(w, add_special_tokens=False).input_ids[0] for w in words]].mean())
                     for words in TASK.label_words])


@pytest.mark.parametrize("with_prompt", [False, True])
def test_the_scoring_loop_is_batch_invariant_and_matches_a_hand_built_forward(tiny, with_prompt):
    model, tok = tiny
    texts = [SHORT, *LONGER, "Meh.", "A joy from start to finish.", "Not for me, though the actors try hard."]
    prompt = SoftPrompt.from_vocab(model, 4, seed=1).weight.detach() if with_prompt else None
    one, seven = (prompt_class_scores(model, tok, TASK, texts, [prompt], batch_size=size, progress=False)[0]
                  for size in (1, 7))
    assert one.shape == (7, 2) and np.abs(one - seven).max() < 1e-4
    assert np.abs(seven - np.stack([by_hand(model, tok, t, prompt) for t in texts])).max() < 1e-4


def test_the_scoring_loop_reads_many_prompts_and_full_logits_alike(tiny):
    model, tok = tiny
    prompts = [None, SoftPrompt.from_vocab(model, 4, seed=1).weight.detach()]
    cost = Cost()
    scores = prompt_class_scores(model, tok, TASK, LONGER, prompts, batch_size=2, progress=False, cost=cost)
    logits = prompt_class_scores(model, tok, TASK, LONGER, prompts, batch_size=2, progress=False, logits=True)
    assert scores.shape == (2, 3, 2) and logits.shape == (2, 3, model.config.vocab_size)
    verbalizer = Verbalizer.for_task(TASK, tok)
    for k, prompt in enumerate(prompts):
        assert np.array_equal(scores[k], verbalizer.scores(torch.from_numpy(logits[k])).numpy())
        assert np.array_equal(scores[k], prompt_class_scores(model, tok, TASK, LONGER, [prompt], 2, progress=False)[0])
    text_tokens = int(encode(TASK, tok, LONGER)["attention_mask"].sum())
    assert cost.examples == 6 and cost.tokens == 2 * text_tokens + 4 * len(LONGER)


def test_init_from_text_uses_the_instruction_embeddings(tiny):
    model, tok = tiny
    ids = tok(TASK.instruction, add_special_tokens=False).input_ids
    prompt = SoftPrompt.from_text(model, tok, TASK.instruction, len(ids) + 2)
    table = model.get_input_embeddings().weight
    assert torch.equal(prompt.weight[: len(ids)], table[ids])
    assert torch.equal(prompt.weight[len(ids):], table[ids[:2]])  # cycled to fill the length
    assert prompt.meta["length"] == len(ids) + 2 and prompt.meta["hidden_size"] == table.shape[1]


def test_save_load_roundtrip_and_mismatch_refused(tiny, smol, tmp_path):
    model, tok = tiny
    prompt = SoftPrompt.from_text(model, tok, TASK.instruction, 4, task=TASK.name, template=TASK.template)
    path = prompt.save(tmp_path / "p.pt")
    loaded = SoftPrompt.load(path, model)
    assert torch.equal(loaded.weight, prompt.weight)
    assert loaded.meta == prompt.meta and loaded.meta["template"] == TASK.template
    with pytest.raises(PromptMismatch, match="hidden size 64"):
        SoftPrompt.load(path, smol[0])
    renamed = SoftPrompt(prompt.weight, **{**prompt.meta, "model": "another-model"})
    with pytest.raises(PromptMismatch, match="another-model"):
        renamed.check(model)
    renamed.check(model, same_model=False)  # pasting across models of the same width is allowed on purpose


def test_label_words_must_be_single_tokens(tiny):
    _, tok = tiny
    bad = TASK.__class__(**{**TASK.__dict__, "label_words": ((" negative",), (" mediocrely",))})
    with pytest.raises(ValueError, match="mediocrely"):
        Verbalizer.for_task(bad, tok)


def test_class_score_is_the_mean_of_label_word_logits(tiny):
    _, tok = tiny
    verbalizer = Verbalizer.for_task(TASK, tok)
    logits = torch.randn(2, len(tok))
    for c, words in enumerate(TASK.label_words):
        ids = [tok(w, add_special_tokens=False).input_ids[0] for w in words]
        assert torch.allclose(verbalizer.scores(logits)[:, c], logits[:, ids].mean(-1))


def test_long_texts_are_shortened_before_the_template(tiny):
    _, tok = tiny
    batch = encode(TASK, tok, ["word " * 500], max_text_tokens=16)
    text = tok.decode(batch["input_ids"][0])
    assert text.endswith("Sentiment:") and batch["input_ids"].shape[1] < 40


def test_provider_meta_keeps_only_whitelisted_facts():
    meta = {"length": 4, "hidden_size": 64, "model": "m", "task": "t", "template": "{text}", "epsilon": 8.0,
            "run_key": "k", "seed": 0, "curve": {"loss": [0.7]}, "cost": {"wall_seconds": 1.0}, "batch_size": 8,
            "dp": {"private": True, "noise_multiplier": 1.2, "delta": 1e-5, "batch_sizes": [3, 5]}}
    public = provider_meta(meta)
    assert set(public) == {"length", "hidden_size", "model", "task", "template", "epsilon", "dp"}  # no run key:
    # the owner's skip-if-done key digests a task file's data, so it stays in the owner's record
    assert public["dp"] == {"private": True, "noise_multiplier": 1.2, "delta": 1e-5}
    assert set(public) <= PROVIDER_KEYS and set(public["dp"]) <= PROVIDER_DP_KEYS
    assert "batch_sizes" in meta["dp"]  # the owner's dict is not changed


def test_release_is_refused_for_seeded_or_noiseless_dp_prompts():
    private = {"task": "t", "epsilon": 1.0, "dp": {"private": True, "randomness": "secret", "noise_multiplier": 3.0}}
    check_release(private)
    check_release({"epsilon": math.inf, "dp": {"private": False}})  # no guarantee claimed, nothing to refuse
    with pytest.raises(NotReleasable, match=dp.NOT_PRIVATE):
        check_release({**private, "dp": {**private["dp"], "randomness": dp.NOT_PRIVATE}})
    with pytest.raises(NotReleasable, match="without noise"):
        check_release({**private, "dp": {**private["dp"], "noise_multiplier": 0.0}})


def test_the_owner_record_is_saved_next_to_the_prompt_and_never_loaded_with_it(tiny, tmp_path):
    model, tok = tiny
    prompt = SoftPrompt(SoftPrompt.from_text(model, tok, TASK.instruction, 4).weight, record={"curve": [0.7, 0.5]},
                        task=TASK.name)
    path = prompt.save(tmp_path / "p.pt")
    assert record_path(path) == tmp_path / "p.owner.json" and read_record(path) == {"curve": [0.7, 0.5]}
    loaded = SoftPrompt.load(path)
    assert loaded.record == {} and loaded.meta == prompt.meta
    assert "curve" not in torch.load(path, weights_only=True)["meta"]
    SoftPrompt(prompt.weight).save(tmp_path / "bare.pt")  # no record, no record file
    with pytest.raises(FileNotFoundError, match="bare.owner.json"):
        read_record(tmp_path / "bare.pt")


def test_length_grouped_logits_are_the_whole_batch_s_in_its_order(tiny):
    """Training steps run a batch in length-sorted groups without the padding each group shares: the same logits
    and prompt gradients (shared or one copy per example), row for row, on fewer tokens."""
    from post.prompt import grouped_logits

    model, tok = tiny
    texts = [SHORT, *LONGER, SHORT + " and then some more words", *reversed(LONGER)]
    batch = encode(TASK, tok, texts)
    weight = SoftPrompt.from_text(model, tok, TASK.instruction, 4).weight
    for prompt in (weight.detach().clone().requires_grad_(),
                   weight.detach().unsqueeze(0).repeat(len(texts), 1, 1).requires_grad_()):
        whole = next_token_logits(model, batch["input_ids"], batch["attention_mask"], prompt)
        (whole_grad,) = torch.autograd.grad(whole.sum(), prompt)
        for size in (1, 2, 3):  # groups of about this many examples: 8, 4 or 3 groups (some unpadded)
            grouped = grouped_logits(model, batch["input_ids"], batch["attention_mask"], prompt, size)
            (grad,) = torch.autograd.grad(grouped.sum(), prompt)
            assert (grouped - whole).abs().max() < 1e-4, size
            assert (grad - whole_grad).abs().max() < 1e-5 * whole_grad.abs().max(), size  # float sums' order
