"""A key written twice in a task file or a profile is refused: YAML would silently keep the last one."""

import pytest

from post import config, declarations, files, tasks
from post.config import ConfigError, load_config

TASK = """tasks:
  spam:
    data: a.csv
    classes: {ham: [" no"], spam: [" yes"]}
    template: "Message: {text}\\nSpam?"
    instruction: Is the message spam?
"""


@pytest.mark.parametrize("text, key, line", [(TASK + "pools: {p: p.txt}\npools: {q: q.txt}\n", "pools", 8),
                                             (TASK + "    template: \"{text}\"\n", "template", 7)])
def test_a_repeated_key_in_a_task_file_is_refused(tmp_path, text, key, line):
    (tmp_path / "tasks.yaml").write_text(text)
    before = dict(tasks.TASKS)
    with pytest.raises(declarations.TaskError) as err:
        tasks.register_file(tmp_path / "tasks.yaml")
    assert f"tasks.yaml is not valid YAML: key {key!r} repeated at line {line}" in str(err.value)
    assert "\n" not in str(err.value) and tasks.TASKS == before


@pytest.mark.parametrize("text, key, line", [("model: tiny-random-llama\nseed: 0\nseed: 1\n", "seed", 3),
                                             ("model: tiny-random-llama\ntune:\n  steps: 3\n  steps: 4\n", "steps", 4)])
def test_a_repeated_key_in_a_profile_is_refused(tmp_path, monkeypatch, text, key, line):
    (tmp_path / "mine.yaml").write_text(text)
    monkeypatch.setattr(config, "PARAMS_DIR", tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config("mine")
    assert f"mine.yaml is not valid YAML: key {key!r} repeated at line {line}" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_shipped_profiles_and_task_files_have_no_repeated_keys():
    for path in [*config.PARAMS_DIR.glob("*.yaml"), *files.ROOT.joinpath("examples").glob("*.yaml")]:
        declarations.load_yaml(path)
