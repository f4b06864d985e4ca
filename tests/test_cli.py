"""The post command: help everywhere, both parties end to end on a task from a CSV file, bad input refused, and
what crosses between the parties: nothing but the weights and public facts, checked on arrival."""

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import post.artifacts
import post.hardware
import post.models
from post import cli, dp, tasks
from post.models import load
from post.prompt import FalseClaim, SoftPrompt, Verbalizer, encode, next_token_logits, read_record

EXAMPLE = Path(__file__).parents[1] / "examples"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Artifacts and results under tmp_path; tasks and pools a test declares are forgotten after it."""
    for name in ("ARTIFACTS", "RESULTS", "FIGURES"):
        monkeypatch.setattr(post.artifacts, name, tmp_path / name.lower())
    saved = [(registry, dict(registry)) for registry in (tasks.TASKS, tasks.PUBLIC_POOLS, tasks.DEFAULT_POOLS)]
    yield tmp_path
    for registry, before in saved:
        registry.clear()
        registry.update(before)
    tasks._splits.cache_clear()


def post_(capsys, *argv) -> tuple[int, str, str]:
    """Run ``post ARGV`` in this process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["", *cli.COMMANDS])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"] if command else ["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: post {command}".strip()) and "exit codes" in out


def test_the_console_script_runs_and_refuses_bad_usage_with_code_2():
    script = Path(sys.executable).parent / "post"  # installed by pyproject's [project.scripts]
    done = subprocess.run([script, "tune", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--epsilon" in done.stdout
    done = subprocess.run([script, "tune", "--task", "trec", "--epsilon", "-1"], capture_output=True, text=True)
    assert done.returncode == 2 and "epsilon must be > 0" in done.stderr


@pytest.mark.stage
def test_a_task_from_a_csv_file_goes_through_both_parties_and_loads_in_peft(sandbox, capsys):
    owner_file = EXAMPLE / "sms_spam.yaml"
    provider = sandbox / "provider"  # the declaration and the public texts, not the data file it names
    provider.mkdir()
    for name in ("sms_spam.yaml", "public_messages.txt"):
        shutil.copy(EXAMPLE / name, provider)
    smoke = ["--profile", "smoke", "--quiet"]
    prompts = sandbox / "artifacts" / "smoke" / "prompts" / "sms_spam"

    assert post_(capsys, "distill", *smoke)[0] == 0
    code, out, err = post_(capsys, "tune", *smoke, "--task-file", owner_file, "--task", "sms_spam", "--epsilon", 8)
    assert code == 0, err
    source_prompt = prompts / "compt_eps8_seed0.pt"
    meta = SoftPrompt.load(source_prompt).meta
    assert meta["task"] == "sms_spam" and meta["epsilon"] == 8
    assert meta["dp"]["private"] and meta["dp"]["randomness"] == "secret" and meta["dp"]["n"] == 64
    assert "curve" not in meta and "curve" in read_record(source_prompt)  # the owner's record stays beside it
    assert str(source_prompt) in out

    code, out, err = post_(capsys, "transfer", *smoke, "--task-file", provider / "sms_spam.yaml",
                           "--prompt", source_prompt)
    assert code == 0, err
    target_prompt = SoftPrompt.load(prompts / "post_eps8_seed0.pt")
    assert target_prompt.meta["model"] == "tiny-random-llama" and target_prompt.meta["dp"] == meta["dp"]
    assert target_prompt.meta["transfer"]["public_pool"] == "public_messages"

    code, out, err = post_(capsys, "evaluate", *smoke, "--task-file", owner_file,
                           "--prompt", prompts / "post_eps8_seed0.pt")
    assert code == 0, err
    assert re.fullmatch(r"sms_spam test \(n=60\) on tiny-random-llama: accuracy \d\.\d{3} with the prompt, \d\.\d{3} "
                        r"without it, 0\.667 for the majority class\n", out)

    adapter = sandbox / "adapter"
    code, out, err = post_(capsys, "export", "--profile", "smoke", "--task-file", owner_file,
                           "--prompt", prompts / "post_eps8_seed0.pt", "--peft", adapter)
    assert code == 0, err
    assert {"adapter_config.json", "adapter_model.safetensors", "post.json"} <= {p.name for p in adapter.iterdir()}
    strict = json.loads((adapter / "post.json").read_text(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert strict["scoring"] == {"max_text_tokens": 32, "precision": post.hardware.resolve_precision("auto", "cpu")}
    assert strict["epsilon"] == "8"  # strict JSON: no Infinity, "inf" without DP
    code, out, _ = post_(capsys, "inspect", adapter)
    assert "PROMPT_TUNING adapter for tiny-random-llama, 4 virtual tokens" in out
    assert "epsilon 8 by DP-SGD: delta 1e-05, sigma" in out and "N 64" in out and "randomness secret" in out

    from peft import PeftModel

    model, tokenizer = load("tiny-random-llama")
    task = tasks.get_task("sms_spam")
    verbalizer = Verbalizer.for_task(task, tokenizer)
    ours, without = [], []
    with torch.no_grad():
        batches = [encode(task, tokenizer, [text], 32) for text in tasks.load_split("sms_spam", "test", 8).texts]
        for batch in batches:
            ours.append(verbalizer.scores(next_token_logits(model, **batch, prompt=target_prompt.weight)))
            without.append(verbalizer.scores(next_token_logits(model, **batch)))
        adapted = PeftModel.from_pretrained(model, adapter)
        theirs = [verbalizer.scores(adapted(**batch).logits[:, -1].float()) for batch in batches]
    assert (torch.cat(ours) - torch.cat(theirs)).abs().max() < 1e-4
    assert (torch.cat(ours) - torch.cat(without)).abs().max() > 1e-3  # the adapter carries a prompt that matters


def test_inspect_tells_the_owner_record_and_export_refuses_a_prompt_for_another_model(sandbox, capsys):
    prompt = SoftPrompt(torch.randn(4, 64), record={"curve": [0.5]}, model="artifacts/smoke/source_model",
                        task="rotten_tomatoes", template=tasks.REVIEW, epsilon=float("inf"), dp={"private": False})
    path = prompt.save(sandbox / "compt_epsinf_seed0.pt")
    code, out, _ = post_(capsys, "inspect", path)
    assert code == 0 and "privacy       none" in out and "may be handed to a provider" in out
    assert "compt_epsinf_seed0.owner.json (the owner's" in out
    code, out, err = post_(capsys, "export", "--profile", "smoke", "--prompt", path, "--peft", sandbox / "adapter")
    assert code == 2 and err.count("\n") == 1 and "was made for 'artifacts/smoke/source_model'" in err
    assert not (sandbox / "adapter").exists()


def test_a_seeded_dp_prompt_is_neither_transferred_nor_exported(sandbox, capsys, dp_record):
    prompt = SoftPrompt(torch.randn(4, 64), model="artifacts/smoke/source_model", task="rotten_tomatoes",
                        template=tasks.REVIEW, epsilon=8.0, dp=dp_record(8.0, dp.NOT_PRIVATE))
    path = prompt.save(sandbox / "compt_eps8_seed0.pt")
    code, out, _ = post_(capsys, "inspect", path)
    assert code == 0 and "must stay with the owner" in out
    code, _, err = post_(capsys, "transfer", "--profile", "smoke", "--prompt", path)
    assert code == 2 and err.count("\n") == 1 and dp.NOT_PRIVATE in err and not (sandbox / "artifacts").exists()
    target = SoftPrompt(torch.randn(4, 64), **{**prompt.meta, "model": "tiny-random-llama"})  # as 03 would make
    code, _, err = post_(capsys, "export", "--profile", "smoke", "--prompt", target.save(sandbox / "post_eps8.pt"),
                         "--peft", sandbox / "adapter")
    assert code == 2 and err.count("\n") == 1 and dp.NOT_PRIVATE in err and not (sandbox / "adapter").exists()


def test_a_step_that_is_not_ready_exits_3(sandbox, capsys):
    code, _, err = post_(capsys, "tune", "--profile", "smoke", "--task", "trec", "--epsilon", "inf")
    assert code == 3 and err.count("\n") == 1 and "source_model is missing: run `post distill --profile smoke`" in err


GOOD = {"data": "data.csv", "classes": {"ham": [" no"], "spam": [" yes"]}, "template": "Message: {text}\nSpam?",
        "instruction": "Is the message spam?"}
ROWS = "text,label\n" + "".join(f"message number {i},{'spam' if i % 3 else 'ham'}\n" for i in range(30))
BAD = {  # what is wrong -> (declaration changes, data file, the error)
    "missing file": ({"data": "nowhere.csv"}, ROWS, "nowhere.csv: no such data file"),
    "missing column": ({"label": "sentiment"}, ROWS, "data.csv: no column 'sentiment' (columns: text, label)"),
    "empty data": ({}, "text,label\n", "data.csv: no rows with both a text ('text') and a label ('label')"),
    "label not a class": ({}, ROWS + "hello,eggs\n", "data.csv: label 'eggs' (data row 31) is not a class (ham, spam"),
    "class without examples": ({}, ROWS.replace(",ham", ",spam"), "data.csv: class 'ham' has no examples"),
    "label word of two tokens": ({"classes": {"ham": [" no"], "spam": [" Spam"]}}, ROWS,
                                 "label word ' Spam' of task 'mine' is 2 tokens"),
    "template without {text}": ({"template": "Message: {message}"}, ROWS, "tasks.mine.template must contain {text}"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_in_one_line_and_writes_nothing(case, sandbox, capsys):
    changes, rows, error = BAD[case]
    (sandbox / "data.csv").write_text(rows)
    (sandbox / "mine.yaml").write_text(yaml.safe_dump({"tasks": {"mine": {**GOOD, **changes}}}))
    code, out, err = post_(capsys, "tune", "--profile", "smoke", "--task-file", sandbox / "mine.yaml",
                           "--task", "mine", "--epsilon", 8)
    assert code == 2 and err.count("\n") == 1 and error in err, err
    assert not (sandbox / "artifacts").exists() and not (sandbox / "results").exists()


# --- what crosses between the parties: nothing but the weights and public facts, checked on arrival -----------


def _meta(path) -> dict:
    return torch.load(path, weights_only=True)["meta"]


def _differing(a: dict, b: dict) -> set:
    return {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}


@pytest.mark.stage
def test_the_providers_files_differ_only_in_the_weights_and_the_dp_record(sandbox, capsys, monkeypatch):
    """Two owners whose data differ in one record, with the same secret randomness: every file the provider gets
    (prompt file, target prompt, adapter, what inspect shows) is the same apart from the weights and what the DP
    record states (N, and the sigma and q that follow from it). A digest of the data, as a run key was, would
    tell the provider which dataset it was."""
    smoke = ["--profile", "smoke", "--quiet"]
    assert post_(capsys, "distill", *smoke)[0] == 0
    monkeypatch.setattr(dp.os, "urandom", lambda n: hashlib.shake_256(b"the same draws").digest(n))
    made = sandbox / "artifacts" / "smoke" / "prompts" / "spam"
    lines = ROWS.splitlines(keepends=True)
    owners = {"all": "".join(lines), "one less": "".join(lines[:-1])}
    for owner, rows in owners.items():
        folder = sandbox / owner
        folder.mkdir()
        (folder / "data.csv").write_text(rows)
        (folder / "spam.yaml").write_text(yaml.safe_dump({"tasks": {"spam": {**GOOD, "public_pool": "news"}}}))
        for epsilon in ("8", "inf"):
            code, _, err = post_(capsys, "tune", *smoke, "--task-file", folder / "spam.yaml", "--task", "spam",
                                 "--epsilon", epsilon)
            assert code == 0, err
            shutil.copy(made / f"compt_eps{epsilon}_seed0.pt", folder / f"eps{epsilon}.pt")  # not the record
    dp_facts = {"n", "noise_multiplier", "sample_rate", "prv_epsilon", "rdp_epsilon", "delta"}
    for epsilon in ("8", "inf"):
        a, b = (_meta(sandbox / owner / f"eps{epsilon}.pt") for owner in owners)
        assert _differing(a, b) == ({"dp"} if epsilon == "8" else set()), _differing(a, b)
        assert _differing(a["dp"], b["dp"]) <= dp_facts and "run_key" not in a
    # the transfer of the same weights under either owner's metadata: only the DP record and the provider's clock
    weight = torch.load(sandbox / "all" / "eps8.pt", weights_only=True)["weight"]
    torch.save({"weight": weight, "meta": _meta(sandbox / "one less" / "eps8.pt")}, sandbox / "one less" / "same.pt")
    shutil.copy(sandbox / "all" / "eps8.pt", sandbox / "all" / "same.pt")
    views = {}
    for owner in owners:
        folder = sandbox / owner
        code, _, err = post_(capsys, "transfer", *smoke, "--task-file", folder / "spam.yaml",
                             "--prompt", folder / "same.pt", "--out", folder / "target.pt")
        assert code == 0, err
        code, _, err = post_(capsys, "export", "--profile", "smoke", "--task-file", folder / "spam.yaml",
                             "--prompt", folder / "target.pt", "--peft", folder / "adapter")
        assert code == 0, err
        shown = [post_(capsys, "inspect", folder / name)[1].replace(str(folder), "FOLDER")
                 for name in ("same.pt", "target.pt", "adapter")]
        views[owner] = (_meta(folder / "target.pt"), json.loads((folder / "adapter" / "post.json").read_text()),
                        (folder / "adapter" / "adapter_config.json").read_text(), shown)
    (target_a, peft_a, config_a, shown_a), (target_b, peft_b, config_b, shown_b) = views.values()
    assert _differing(target_a, target_b) == {"dp", "cost"} and _differing(target_a["dp"], target_b["dp"]) <= dp_facts
    assert _differing(target_a["cost"], target_b["cost"]) == {"wall_seconds"}
    assert _differing(peft_a, peft_b) == {"dp"} and config_a == config_b
    for a, b in zip(shown_a, shown_b):
        assert [x for x, y in zip(a.splitlines(), b.splitlines()) if x != y] == \
            [x for x in a.splitlines() if x.strip().startswith("privacy")]


def test_a_false_dp_claim_is_refused_on_arrival(sandbox, capsys, dp_record):
    honest = dict(model="artifacts/smoke/source_model", task="rotten_tomatoes", template=tasks.REVIEW, epsilon=8.0,
                  dp=dp_record(8.0))
    path = SoftPrompt(torch.randn(4, 64), **honest).save(sandbox / "honest.pt")
    assert post_(capsys, "inspect", path)[0] == 0 and SoftPrompt.load(path).meta["epsilon"] == 8.0
    edits = {"stronger claim": {"epsilon": 1.0, "dp": {**honest["dp"], "epsilon": 1.0}},
             "spent edited": {"dp": {**honest["dp"], "prv_epsilon": 0.5}},
             "less noise than stated": {"dp": {**honest["dp"],
                                               "noise_multiplier": honest["dp"]["noise_multiplier"] / 2}},
             "record dropped": {"dp": {"private": True, "randomness": "secret"}},
             "epsilon without a record": {"dp": {"private": False}}}
    for name, edit in edits.items():
        path = sandbox / f"{name.replace(' ', '_')}.pt"
        torch.save({"weight": torch.randn(4, 64), "meta": {"length": 4, "hidden_size": 64, **honest, **edit}}, path)
        code, _, err = post_(capsys, "inspect", path)
        assert code == 2 and err.count("\n") == 1 and path.name in err, (name, err)
        with pytest.raises(FalseClaim):
            SoftPrompt.load(path)


def test_weights_that_are_not_finite_or_not_the_stated_shape_are_refused_naming_the_file(sandbox, capsys):
    meta = {"length": 4, "hidden_size": 64, "model": "tiny-random-llama", "task": "rotten_tomatoes",
            "template": tasks.REVIEW, "epsilon": math.inf, "dp": {"private": False}}
    nan = torch.randn(4, 64)
    nan[1, 2] = math.nan
    for name, weight, error in (("nan.pt", nan, "NaN or inf"), ("wide.pt", torch.randn(4, 65), "shape (4, 65)"),
                                ("ints.pt", torch.zeros(4, 64, dtype=torch.long), "torch.int64")):
        torch.save({"weight": weight, "meta": meta}, sandbox / name)
        for argv in (("inspect", sandbox / name), ("evaluate", "--profile", "smoke", "--prompt", sandbox / name),
                     ("transfer", "--profile", "smoke", "--prompt", sandbox / name)):
            code, _, err = post_(capsys, *argv)
            assert code == 2 and err.count("\n") == 1 and name in err and error in err, err
    with pytest.raises(ValueError, match="NaN or inf"):
        SoftPrompt(nan, **meta).save(sandbox / "written.pt")
    assert not (sandbox / "written.pt").exists() and not (sandbox / "artifacts").exists()


def test_transfer_never_writes_over_its_input(sandbox, capsys):
    prompt = SoftPrompt(torch.randn(4, 64), record={"curve": [0.5]}, model="artifacts/smoke/source_model",
                        task="rotten_tomatoes", template=tasks.REVIEW, epsilon=math.inf, dp={"private": False})
    path = prompt.save(sandbox / "compt.pt")
    before = {p: p.read_bytes() for p in (path, path.with_suffix(".owner.json"))}
    for out in before:
        code, _, err = post_(capsys, "transfer", "--profile", "smoke", "--prompt", path, "--out", out)
        assert code == 2 and err.count("\n") == 1 and "is an input of this command" in err, err
    assert {p: p.read_bytes() for p in before} == before and not (sandbox / "artifacts").exists()


def test_evaluate_opens_only_the_profiles_models(sandbox, capsys, monkeypatch):
    """A prompt file names its model, but the owner's command opens the profile's target or source only."""
    opened = []
    monkeypatch.setattr(post.models, "load_model", lambda name, *a, **k: opened.append(name))
    (sandbox / "elsewhere").mkdir()
    for model in (str(sandbox / "elsewhere"), "someone/any-hub-model", "../artifacts/smoke/source_model"):
        path = SoftPrompt(torch.randn(4, 64), model=model, task="rotten_tomatoes", template=tasks.REVIEW,
                          epsilon=math.inf, dp={"private": False}).save(sandbox / "p.pt")
        code, _, err = post_(capsys, "evaluate", "--profile", "smoke", "--prompt", path)
        assert code == 2 and err.count("\n") == 1 and "scores prompts for its target 'tiny-random-llama'" in err
    assert opened == []


def test_an_epsilon_too_small_to_calibrate_is_one_line(sandbox, capsys):
    code, _, err = post_(capsys, "tune", "--profile", "smoke", "--task", "trec", "--epsilon", "1e-6")
    assert code == 2 and err.count("\n") == 1 and "too small to calibrate" in err, err
    assert not (sandbox / "artifacts").exists()
