"""A profile name becomes a path under params/, artifacts/, results/ and figures/, and `make clean` deletes two of
them: only a plain name with a params/<name>.yaml gets through. `make clean`, load_config, post.run, the CLI and
the artifact helpers refuse anything else in one line, and create or delete nothing. Seeds must fit int64."""

import shutil
import signal
import subprocess
import types

import pytest

from post import artifacts, cli, run
from post.config import ConfigError, PARAMS_DIR, load_config
from post.files import ROOT

# escapes, globs and spaces; the last two name a real profile file by a path, which load_config read before
BAD = ["../x", "../../x", "a b", "", "*", "/etc/passwd", "../params/smoke", str(PARAMS_DIR / "smoke")]
REFUSED = "a name is letters, digits, _ and - only"
# the sandbox checkout is tmp/repo; tmp/x lies outside it, repo/x and repo/b outside its profile folders
SENTINELS = ["repo/artifacts/cpu/keep", "repo/artifacts/other/keep", "repo/artifacts/smoke/model/weights",
             "repo/results/cpu/notebooks/keep", "repo/results/smoke/keep.json", "repo/results/smoke/notebooks/nb",
             "repo/x/keep", "repo/x/notebooks/keep", "repo/b/keep", "x/keep", "x/notebooks/keep"]


def files(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def checkout(tmp_path):
    """tmp/repo: the Makefile, params/ and sentinel files in and around the profile folders."""
    shutil.copytree(ROOT / "params", tmp_path / "repo" / "params")
    shutil.copy(ROOT / "Makefile", tmp_path / "repo")
    for name in SENTINELS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    return tmp_path


def clean(checkout, profile: str) -> subprocess.CompletedProcess:
    repo = checkout / "repo"
    return subprocess.run(["make", "--no-print-directory", "-C", repo, "-f", repo / "Makefile", "clean",
                           f"PROFILE={profile}"], capture_output=True, text=True)


@pytest.mark.parametrize("profile", ["../x", "../../x", "", "a b", "*", "cpu/..", "nope"])
def test_make_clean_refuses_a_bad_profile_and_deletes_nothing(checkout, profile):
    before = files(checkout)
    done = clean(checkout, profile)
    assert done.returncode != 0
    assert f"make clean: PROFILE='{profile}' is not a profile" in done.stderr and "nothing deleted" in done.stderr
    assert files(checkout) == before


def test_make_clean_deletes_the_named_profiles_folders_only(checkout):
    """The control: a real profile's artifacts and executed notebooks go, everything else stays."""
    before = files(checkout)
    assert clean(checkout, "smoke").returncode == 0
    assert before - files(checkout) == {"repo/artifacts/smoke/model/weights", "repo/results/smoke/notebooks/nb"}


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """artifacts/, results/ and figures/ under tmp/repo, so that anything created anywhere in tmp shows."""
    for name in ("ARTIFACTS", "RESULTS", "FIGURES"):
        monkeypatch.setattr(artifacts, name, tmp_path / "repo" / name.lower())
    return tmp_path


def refused(message: str, profile: str) -> bool:
    return f"no profile {profile!r}: {REFUSED}" in message and "smoke" in message and "\n" not in message.strip()


@pytest.mark.parametrize("profile", BAD)
def test_load_config_refuses_a_profile_that_is_not_a_plain_name(profile):
    with pytest.raises(ConfigError) as err:
        load_config(profile)
    assert refused(str(err.value), profile)


@pytest.mark.parametrize("profile", BAD)
def test_post_run_refuses_a_bad_profile_before_creating_anything(profile, tree, monkeypatch, capsys):
    # in this process: leave pytest's signal handlers and parent-death signal alone
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    monkeypatch.setattr(run.ctypes, "CDLL", lambda name: types.SimpleNamespace(prctl=lambda *args: 0))
    assert run.main([profile]) == 2
    assert refused(capsys.readouterr().err, profile)
    assert files(tree) == set()


@pytest.mark.parametrize("profile", BAD)
def test_the_cli_refuses_a_bad_profile_first_with_code_2(profile, tree, capsys):
    code = cli.main(["export", "--profile", profile, "--prompt", str(tree / "p.pt"), "--peft", str(tree / "out")])
    assert code == 2 and refused(capsys.readouterr().err, profile)
    assert files(tree) == set()


@pytest.mark.parametrize("profile", BAD)
def test_artifact_helpers_and_the_lock_refuse_a_bad_profile(profile, tree):
    for helper in (artifacts.artifact_dir, artifacts.results_dir, artifacts.figures_dir):
        with pytest.raises(ConfigError, match=REFUSED):
            helper(profile)
    with pytest.raises(ConfigError, match=REFUSED):
        with run.profile_lock(profile):
            pass
    assert not any(tree.rglob("*"))


def test_a_seed_outside_int64_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^seed = -1: out of range: must be >= 0$"):
        load_config("smoke", {"seed": -1})
    for seed in (2**63, 2**64, 1e19):
        with pytest.raises(ConfigError) as err:
            load_config("smoke", {"seed": seed})
        assert str(err.value) == f"seed = {int(seed)}: out of range: must be an integer in [0, 2**63 - 1]"
    assert load_config("smoke", {"seed": 2**63 - 1}).seed == 2**63 - 1
