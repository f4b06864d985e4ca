"""Skip what is done: one rule for every stage's finished pieces (post.reuse)."""

import json

from post.reuse import content_key, keyed_path, reuse, save_json


def test_a_piece_is_made_once_then_read_back(tmp_path):
    made = []
    path = keyed_path(tmp_path, "part", ".json", {"lr": 0.01})
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    for _ in range(2):
        assert reuse(path, read, lambda: made.append(1) or {"x": 1}, save_json) == {"x": 1}
    assert made == [1] and path.parent == tmp_path and path.name.startswith("part_")


def test_a_changed_input_names_another_piece_and_equal_inputs_the_same():
    assert content_key({"a": 1, "b": [2, 3]}) == content_key({"b": [2, 3], "a": 1})  # key order does not matter
    assert keyed_path("f", "p", ".pt", {"lr": 0.01}) != keyed_path("f", "p", ".pt", {"lr": 0.02})


def test_an_unreadable_or_foreign_piece_is_made_again(tmp_path, capsys):
    path = tmp_path / "rows.json"
    path.write_text('{"trunc')  # a crash mid-write
    stamped = lambda p: (lambda d: d["rows"] if d["key"] == "k2" else None)(json.loads(p.read_text()))  # noqa: E731
    save = lambda rows, p: p.write_text(json.dumps({"key": "k2", "rows": rows}))  # noqa: E731
    assert reuse(path, stamped, lambda: [1], save) == [1]
    assert "rows.json is unreadable" in capsys.readouterr().err
    path.write_text(json.dumps({"key": "k1", "rows": [0]}))  # made by other inputs: its stamp differs
    assert reuse(path, stamped, lambda: [2], save) == [2]
    assert reuse(path, stamped, lambda: [3], save) == [2]  # now it is this key's: read back
