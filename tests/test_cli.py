"""The post command: help everywhere, both parties end to end on a task from a CSV file, bad input refused."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import post.artifacts
from post import cli, dp, tasks
from post.models import load
from post.prompt import SoftPrompt, Verbalizer, encode, next_token_logits, read_record

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


def test_a_seeded_dp_prompt_is_neither_transferred_nor_exported(sandbox, capsys):
    prompt = SoftPrompt(torch.randn(4, 64), model="artifacts/smoke/source_model", task="rotten_tomatoes",
                        template=tasks.REVIEW, epsilon=8.0, dp={"private": True, "randomness": dp.NOT_PRIVATE})
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
    assert code == 3 and err.count("\n") == 1 and "source_model is missing: run notebooks/01_distill.ipynb" in err


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
