"""Task and prediction files: SWE-bench's shape, bad rows named by line and field."""

import json

import pytest

from cispo.envs.swe_instances import DEFAULT_TEST_CMD, TaskError, load_predictions, load_instances


def _row(**kw):
    row = {
        "instance_id": "o__r-1",
        "repo": "o/r",
        "base_commit": "abc",
        "problem_statement": "it breaks",
        "patch": "",
        "test_patch": "",
        "FAIL_TO_PASS": ["t.py::test_a"],
        "PASS_TO_PASS": [],
        "repo_path": "r.bundle",
    }
    row.update(kw)
    return {k: v for k, v in row.items() if v is not ...}


def _write(tmp_path, rows, name="tasks.jsonl"):
    (tmp_path / "r.bundle").write_bytes(b"")
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_rows_load_with_defaults_and_swebench_json_strings(tmp_path):
    path = _write(tmp_path, [_row(), _row(instance_id="o__r-2", FAIL_TO_PASS='["t.py::test_b[x y]"]', test_cmd="PYTHONPATH=src python3 -m pytest")])
    a, b = load_instances(path)
    assert a.repo_path == (tmp_path / "r.bundle").resolve()
    assert a.test_cmd == DEFAULT_TEST_CMD and a.image is None
    assert b.fail_to_pass == ("t.py::test_b[x y]",)
    assert b.to_row()["FAIL_TO_PASS"] == ["t.py::test_b[x y]"]


@pytest.mark.parametrize(
    "row, message",
    [
        (_row(base_commit=...), ":2: field 'base_commit': missing"),
        (_row(patch=3), ":2: field 'patch': expected a string, got int"),
        (_row(FAIL_TO_PASS="not json"), ":2: field 'FAIL_TO_PASS': a string must hold a JSON list"),
        (_row(PASS_TO_PASS=[1]), ":2: field 'PASS_TO_PASS': expected a list of non-empty test id strings"),
        (_row(FAIL_TO_PASS=[], PASS_TO_PASS=[]), ":2: FAIL_TO_PASS and PASS_TO_PASS are both empty"),
        (_row(repo_path="missing.bundle"), ":2: field 'repo_path':"),
        (_row(timeout=-1), ":2: field 'timeout': expected a positive number"),
        (_row(instance_id="o__r-1"), ":2: field 'instance_id': 'o__r-1' already used on line 1"),
        ("{not json", ":2: not valid JSON"),
        ("[1, 2]", ":2: expected a JSON object, got list"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    path = _write(tmp_path, [_row(), row])
    with pytest.raises(TaskError) as e:
        load_instances(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_predictions_jsonl_and_json(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"instance_id": "a", "model_patch": "diff"}) + "\n" + json.dumps({"instance_id": "b", "model_patch": None}) + "\n")
    assert load_predictions(jl) == {"a": "diff", "b": None}
    js = tmp_path / "p.json"
    js.write_text(json.dumps([{"instance_id": "a", "model_patch": "d", "model_name_or_path": "m"}]))
    assert load_predictions(js) == {"a": "d"}
    jl.write_text(json.dumps({"instance_id": "a", "model_patch": 1}) + "\n")
    with pytest.raises(TaskError, match=r"p.jsonl:1: field 'model_patch'"):
        load_predictions(jl)
