import pytest
import torch

from post import files, hardware, models
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


def test_models_load_on_the_device_setting(monkeypatch):
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: moved.append(args) or self)
    model, _ = models.load("tiny-random-llama", device="auto")
    assert moved[-1] == (torch.device("cuda" if torch.cuda.is_available() else "cpu"),)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    models.load("tiny-random-llama", device="auto")
    assert moved[-1] == (torch.device("cuda"),)


class Loaded(Exception):
    """A stage has asked for its model: all the test needs, so nothing after the load runs."""


@pytest.mark.parametrize("setting, expected", [("cpu", "cpu"), ("auto", "cuda")])
def test_stages_02_to_05_load_their_models_on_the_device_setting(setting, expected, tmp_path, monkeypatch):
    """Each model 02-05 load goes where the profile's ``device`` says ("auto" means cuda here: torch is told it
    finds one); a stage that loads with ``load``'s default (cpu) fails the "auto" case."""
    from safetensors.torch import save_file

    from post import artifacts, audit, evaluate, transfer, tune
    from post.config import load_config
    from post.prompt import SoftPrompt

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(hardware.FORCE_ENV, "fp32")  # "auto" precisions in settings hashes: no probe of a GPU
    monkeypatch.setattr(artifacts, "ARTIFACTS", tmp_path / "artifacts")
    monkeypatch.setattr(artifacts, "RESULTS", tmp_path / "results")
    cfg = load_config("smoke", {"device": setting})
    source = artifacts.source_model_dir("smoke")
    source.mkdir(parents=True)
    save_file({"weight": torch.zeros(1)}, source / "model.safetensors")  # whole weights: the loads are recorded
    loads = []

    def record(name, dtype=torch.float32, device="cpu"):
        loads.append((str(name), hardware.resolve_device(device).type))
        return None, None

    def stop(*args, **kwargs):
        record(*args, **kwargs)
        raise Loaded

    for module in (tune, evaluate, audit):
        monkeypatch.setattr(module, "load", stop)
    monkeypatch.setattr(transfer, "load", record)  # load_models only loads: both of its models are recorded
    for method in ("compt", "fullpt"):
        with pytest.raises(Loaded):
            tune.tune_method(cfg, method, progress=False)
    transfer.load_models(cfg)
    with pytest.raises(Loaded):
        evaluate.zero_shot(cfg)
    monkeypatch.setattr(evaluate, "zero_shot", lambda cfg: [])  # the scoreboard's own load: a prompt to score
    files.write_json(artifacts.results_dir("smoke") / "tune.json", [])
    SoftPrompt(torch.zeros(cfg.tune.prompt_length, 64)).save(
        artifacts.prompt_path("smoke", cfg.data.tasks[0], evaluate.SCORED_HERE[0], cfg.transfer.epsilons[0]))
    with pytest.raises(Loaded):
        evaluate.scoreboard(cfg, progress=False)
    with pytest.raises(Loaded):
        audit.run_audit(cfg, progress=False)
    assert loads == [(name, expected) for name in (str(source), cfg.model, cfg.model, str(source), cfg.model,
                                                   cfg.model, str(source))]


def test_a_prompt_naming_its_model_by_absolute_path_fits_the_same_directory(tiny, tmp_path, monkeypatch):
    """Prompts made before local names were repo-relative record the directory's absolute path: still the same
    model; another directory is not."""
    import post.files
    from post.models import load
    from post.prompt import PromptMismatch, SoftPrompt

    model, tok = tiny
    for name in ("m", "other"):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    monkeypatch.setattr(post.files, "ROOT", tmp_path)  # as if tmp_path were the repository
    loaded, _ = load(tmp_path / "m")
    assert model_name(loaded) == "m"
    weight = torch.zeros(2, loaded.config.hidden_size)
    SoftPrompt(weight, model=str(tmp_path / "m"), hidden_size=loaded.config.hidden_size).check(loaded)
    with pytest.raises(PromptMismatch, match="other"):
        SoftPrompt(weight, model=str(tmp_path / "other"), hidden_size=loaded.config.hidden_size).check(loaded)
