import math

import pytest

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
