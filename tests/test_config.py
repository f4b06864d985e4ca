import dataclasses
import math
import re

import pytest
import torch

from post import config, hardware
from post.config import PROFILES, ConfigError, load_config


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_loads(profile):
    cfg = load_config(profile)
    assert cfg.profile == profile
    assert cfg.data.tasks


def test_unknown_key_is_an_error_listing_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config("smoke", {"tune": {"stpes": 3}})
    assert "stpes" in str(err.value) and "steps" in str(err.value) and "valid keys" in str(err.value)
    with pytest.raises(ConfigError, match="modle"):
        load_config("smoke", {"modle": "x"})


def test_types_are_checked_and_infinity_is_read():
    with pytest.raises(ConfigError, match="integer"):
        load_config("smoke", {"seed": 1.5})
    with pytest.raises(ConfigError, match="list"):
        load_config("smoke", {"data": {"tasks": "trec"}})
    cfg = load_config("smoke", {"tune": {"epsilons": ["inf", 8]}})
    assert math.isinf(cfg.tune.epsilons[0]) and cfg.tune.epsilons[1] == 8.0


def test_missing_profile_names_the_valid_ones():
    with pytest.raises(ConfigError, match="smoke"):
        load_config("nope")


def test_section_hash_changes_only_with_its_section():
    base = load_config("smoke")
    other_section = load_config("smoke", {"eval": {"batch_size": 3}})
    same_section = load_config("smoke", {"data": {"max_test": 3}})
    assert base.section_hash("data") == other_section.section_hash("data")
    assert base.section_hash("data") != same_section.section_hash("data")


@pytest.mark.parametrize("overrides, expected", [
    ({"tune": {"steps": -5}}, "tune.steps = -5: out of range: must be > 0"),
    ({"tune": {"batch_size": 0}}, "tune.batch_size = 0: out of range: must be > 0"),
    ({"seed": -1}, "seed = -1: out of range: must be >= 0"),
    ({"tune": {"epsilons": ["inf", -1]}}, "tune.epsilons[1] = -1.0: out of range: must be > 0"),
    ({"tune": {"lr": "inf"}}, "tune.lr = inf: must be finite (inf only in epsilon lists)"),
    ({"transfer": {"alpha": 7}}, "transfer.alpha = 7.0: out of range: must be in [0, 1]"),
    ({"transfer": {"anchor": -0.5}}, "transfer.anchor = -0.5: out of range: must be >= 0"),
    ({"transfer": {"alphas": [0.5, 1.5]}}, "transfer.alphas[1] = 1.5: out of range: must be in [0, 1]"),
    ({"tune": {"precision": "fp8"}}, "tune.precision = 'fp8': must be one of auto, fp32, bf16"),
    ({"device": "tpu"}, "device = 'tpu': must be one of auto, cpu, cuda"),
    ({"transfer": {"alpha_rule": "foo"}}, "transfer.alpha_rule = 'foo': must be one of proxy, fixed"),
    ({"transfer": {"selection": "best"}}, "transfer.selection = 'best': must be one of holdout, last"),
    ({"transfer": {"anchor_on": "some"}}, "transfer.anchor_on = 'some': must be one of all, agree"),
    ({"transfer": {"space": "label"}}, "transfer.space = 'label': must be one of vocab, labels"),
    ({"transfer": {"init": "random"}}, "transfer.init = 'random': must be one of source, instruction"),
    ({"tune": {"select": "best"}}, "tune.select = 'best': must be one of last, validation"),
    ({"tune": {"dp_randomness": "fixed"}}, "tune.dp_randomness = 'fixed': must be one of secret, seeded"),
    ({"distill": {"teacher_cache": "full"}}, "distill.teacher_cache = 'full': must be one of hidden, topk, none"),
    ({"data": {"tasks": ["trec", "treck"]}}, "data.tasks[1] = 'treck': must be a task of post.tasks (rotten_"),
    ({"data": {"tasks": []}}, "data.tasks = []: must list at least one entry"),
    ({"data": {"tasks": ["trec", "trec"]}}, "data.tasks = ['trec', 'trec']: repeats an entry"),
    ({"tune": {"epsilons": [8]}, "transfer": {"epsilons": [8]}}, "tune.epsilons = [8.0]: must include inf"),
    ({"transfer": {"epsilons": ["inf", 2]}}, "transfer.epsilons[1] = 2.0: must be one of tune.epsilons [inf, 8.0]"),
    ({"tune": {"select": "validation", "eval_every": 0}}, "tune.select = 'validation': must be 'last' when"),
    ({"tune": {"patience": 3}}, "tune.patience = 3: must be 0 unless tune.select is 'validation'"),
    ({"transfer": {"holdout_examples": 0}}, "transfer.holdout_examples = 0: must be > 0 when transfer.selection"),
    ({"transfer": {"pools": ["news", "tweets"]}}, "transfer.pools[1] = 'tweets': must be one of amazon_reviews"),
    ({"transfer": {"public_pool": "tweets"}}, "transfer.public_pool = 'tweets': must be '' (the task's default"),
    ({"transfer": {"task_pools": ["trec:news"]}}, "transfer.task_pools[0] = 'trec:news': must be task=pool, a task"),
    ({"transfer": {"task_pools": ["trec=news", "trec=movie_plots"]}}, "transfer.task_pools = ['trec=news', 'trec=movie_plots']: names a task twice"),
    ({"transfer": {"sweep_task": "sst2"}}, "transfer.sweep_task = 'sst2': must be a task of post.tasks"),
    ({"distill": {"public_pool": "wiki"}}, "distill.public_pool = 'wiki': must be a public pool"),
    ({"distill": {"keep_last": 2}}, "distill.keep_last = 2: must be 0 or below distill.num_student_layers (2)"),
    ({"distill": {"objective": "readout+hidden"}}, "distill.objective = 'readout+hidden': needs distill.keep_last > 0"),
    ({"distill": {"objective": "readout+hidden", "keep_last": 1, "student_layers": [0, 3]}},
     "distill.objective = 'readout+hidden': needs distill.keep_last > 0 and no distill.student_layers"),
    ({"audit": {"epsilons": [8, 1]}}, "audit.epsilons = [8.0, 1.0]: must include inf"),
    ({"audit": {"task": "imdb"}}, "audit.task = 'imdb': must be '' (the first of data.tasks) or a task"),
    ({"audit": {"shadows": 2}}, "audit.shadows = 2: must be >= 3"),
    ({"audit": {"positive_control_pool": 64}}, "audit.positive_control_pool = 64: must be <= audit.pool_size (32)"),
    ({"audit": {"transfer_settings": ["positive", "4"]}}, "audit.transfer_settings[1] = '4': must be one of positive"),
    ({"audit": {"confidence": 1}}, "audit.confidence = 1.0: out of range: must be in (0, 1)"),
    ({"model": ""}, "model = '': must name a model"),
    ({"distill": {"readout_pools": ["reviews"]}}, "distill.readout_pools[0] = 'reviews': must be a public pool"),
    ({"distill": {"objective": "readout+hidden", "keep_last": 1, "train_layers": 1}},
     "distill.train_layers = 1: must exceed distill.keep_last (1) with objective 'readout+hidden'"),
    ({"distill": {"train_layers": 3}}, "distill.train_layers = 3: must be 0 (all layers learn) or at most the "
                                       "student's 2 layers"),
])
def test_bad_settings_are_refused_on_loading_in_one_line(overrides, expected):
    """Each names the key, its value and what is allowed, before any stage runs."""
    with pytest.raises(ConfigError) as err:
        load_config("smoke", overrides)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


@pytest.mark.parametrize("key", sorted(config.CHOICES))
def test_every_choice_is_refused_on_loading_when_it_is_not_one(key):
    """Choices have one owner, config.CHOICES: a wrong value fails when the profile loads, naming the choices,
    not hours later inside the stage that reads it (stages do not check again)."""
    section, _, name = key.rpartition(".")
    overrides = {section: {name: "not-a-choice"}} if section else {name: "not-a-choice"}
    with pytest.raises(ConfigError) as err:
        load_config("smoke", overrides)
    assert str(err.value) == f"{key} = 'not-a-choice': must be one of {', '.join(config.CHOICES[key])}"


def test_with_changes_reads_and_checks_each_value_as_loading_does():
    cfg = load_config("smoke")
    changed = cfg.with_changes("transfer", lr="0.003", anchor_on="agree", space="labels", epsilons="[inf]")
    assert (changed.transfer.lr, changed.transfer.anchor_on, changed.transfer.space) == (0.003, "agree", "labels")
    assert changed.transfer.epsilons == (math.inf,) and cfg.transfer.lr != 0.003  # a new config, typed
    for bad, error in (({"space": "label"}, "transfer.space = 'label': must be one of vocab, labels"),
                       ({"lr": "fast"}, "transfer.lr must be a number"), ({"speed": "1"}, "unknown key(s) ['speed']"),
                       ({"epsilons": "[4]"}, "transfer.epsilons[0] = 4.0: must be one of tune.epsilons")):
        with pytest.raises(ConfigError, match=re.escape(error)):
            cfg.with_changes("transfer", **bad)


def test_every_rule_names_a_setting():
    """A renamed field must take its rule along, or the rule would silently stop applying."""
    keys = {key for key, _ in config._settings(load_config("smoke"))}
    assert set(config.CHOICES) | config.POSITIVE | config.FRACTIONS | config.NON_EMPTY <= keys


@pytest.mark.parametrize("text, expected", [("", "is empty"), ("# all commented out\n", "is empty"),
                                            ("tune: [steps: 3\n", "is not valid YAML")])
def test_empty_or_broken_profile_files_are_refused(tmp_path, monkeypatch, text, expected):
    (tmp_path / "mine.yaml").write_text(text)
    monkeypatch.setattr(config, "PARAMS_DIR", tmp_path)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config("mine")
    assert "mine.yaml" in str(err.value) and "\n" not in str(err.value)


def test_cuda_device_is_refused_where_there_is_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device = 'cuda': torch finds no CUDA device here"):
        load_config("smoke", {"device": "cuda"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(hardware.FORCE_ENV, "fp32")  # loading resolves "auto" precisions: no probe of a GPU
    assert load_config("smoke", {"device": "cuda"}).device == "cuda"


@pytest.mark.parametrize("profile", ["smoke", "quick", "cpu"])
def test_auto_settings_are_resolved_once_on_loading(profile, monkeypatch):
    """The profiles say "auto"; a loaded config says what it means here and which settings said it."""
    for meant in ("bf16", "fp32"):
        monkeypatch.setenv(hardware.FORCE_ENV, meant)
        cfg = load_config(profile)
        assert cfg.device == hardware.resolve_device("auto").type
        assert {s.precision for s in (cfg.eval, cfg.distill, cfg.tune, cfg.transfer)} == {meant}
        assert cfg.auto_settings == ("distill.precision", "eval.precision", "transfer.precision", "tune.precision")
    assert load_config(profile, {"tune": {"precision": "bf16"}}).auto_settings == (
        "distill.precision", "eval.precision", "transfer.precision")
    assert cfg.with_changes("tune", precision="auto").tune.precision == "fp32"  # a variant is resolved alike


def test_auto_precision_hashes_as_what_it_resolves_to_and_hashing_never_probes(monkeypatch):
    """Artifacts made in bf16 stay valid where "auto" means bf16, and are remade where it means fp32."""
    bf16 = load_config("smoke", {"tune": {"precision": "bf16"}})
    monkeypatch.setenv(hardware.FORCE_ENV, "bf16")
    auto = load_config("smoke")
    monkeypatch.setenv(hardware.FORCE_ENV, "fp32")
    fp32 = load_config("smoke")
    monkeypatch.setattr(hardware, "resolve_precision", lambda *args: pytest.fail("hashing probed the machine"))
    assert auto.section_hash("tune") == bf16.section_hash("tune") != fp32.section_hash("tune")


def test_a_profile_cannot_say_which_settings_said_auto():
    with pytest.raises(ConfigError, match="auto_settings is not a setting"):
        load_config("smoke", {"auto_settings": ["distill.precision"]})


def test_a_profile_can_declare_tasks_from_files():
    cfg = load_config("smoke", {"data": {"tasks": ["sms_spam"], "task_files": ["examples/sms_spam.yaml"]}})
    assert cfg.data.tasks == ("sms_spam",)
    with pytest.raises(ConfigError, match="data.task_files") as err:
        load_config("smoke", {"data": {"task_files": ["examples/missing.yaml"]}})
    assert "\n" not in str(err.value)


def test_settings_added_later_leave_the_keys_of_earlier_artifacts_alone(monkeypatch):
    """At their defaults, distill's readout_pools, readout_prefixes and train_layers and transfer's task_pools,
    anchor and anchor_on hash as if they did not exist (artifacts made before them stay valid); set, they change
    the key."""
    cfg = load_config("smoke")
    with_them = cfg.section_hash("distill", "transfer")
    added = {config.DistillConfig: ("readout_pools", "readout_prefixes", "train_layers"),
             config.TransferConfig: ("task_pools", "anchor", "anchor_on")}

    fields = dataclasses.fields

    def as_before(obj):  # the sections as they were before these settings existed
        return [f for f in fields(obj) if f.name not in added.get(type(obj), ())]

    monkeypatch.setattr(config.dataclasses, "fields", as_before)
    assert cfg.section_hash("distill", "transfer") == with_them
    monkeypatch.undo()
    for section, change in (("distill", {"readout_prefixes": 1}), ("distill", {"readout_pools": ("movie_plots",)}),
                            ("distill", {"train_layers": 1}), ("transfer", {"anchor": 0.5}),
                            ("transfer", {"anchor_on": "agree"})):
        changed = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **change)})
        assert changed.section_hash("distill", "transfer") != with_them, change
