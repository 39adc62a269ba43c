"""SWE-bench instances and predictions in SWE-bench's JSONL shape, validated row by row.

A task row: instance_id, repo, base_commit, problem_statement, patch (the gold fix),
test_patch, FAIL_TO_PASS, PASS_TO_PASS (lists of pytest ids, or SWE-bench's
JSON-encoded strings of lists), plus ours: `repo_path` (an offline source: a git
directory, a git bundle or a tarball of one, relative to the JSONL file), optional
`image` and `test_cmd`. A bad row is reported by file, line and field, as
`tasks.jsonl:3: field 'base_commit': missing`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Collection

DEFAULT_TEST_CMD = "python3 -m pytest"
_REQUIRED_STR = ("instance_id", "repo", "base_commit", "problem_statement", "patch", "test_patch", "repo_path")


class TaskError(ValueError):
    """A task or prediction row that does not have the shape we need."""


@dataclass(frozen=True)
class SWEInstance:
    instance_id: str
    repo: str  # "owner/name", informational
    base_commit: str
    problem_statement: str
    patch: str  # the gold fix (never shown to the model, never applied when grading a model)
    test_patch: str
    fail_to_pass: tuple[str, ...]
    pass_to_pass: tuple[str, ...]
    repo_path: Path  # absolute after loading
    image: str | None = None  # None: the pool's default image
    test_cmd: str = DEFAULT_TEST_CMD  # run in the repo root, pytest args and test ids appended
    timeout: float = 300.0  # seconds for the test run

    @property
    def test_ids(self) -> list[str]:
        return list(dict.fromkeys(self.fail_to_pass + self.pass_to_pass))

    def to_row(self) -> dict[str, Any]:
        """The SWE-bench-shaped row (what a reward function receives as metadata)."""
        row = asdict(self)
        row["FAIL_TO_PASS"] = list(row.pop("fail_to_pass"))
        row["PASS_TO_PASS"] = list(row.pop("pass_to_pass"))
        row["repo_path"] = str(self.repo_path)
        return row


def instance_from_row(row: Any, where: str, base_dir: Path | None = None) -> SWEInstance:
    """Validate one row; `where` ("tasks.jsonl:3") prefixes every error."""
    if not isinstance(row, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in _REQUIRED_STR:
        if key not in row:
            raise TaskError(f"{where}: field '{key}': missing")
        if not isinstance(row[key], str):
            raise TaskError(f"{where}: field '{key}': expected a string, got {type(row[key]).__name__}")
    for key in ("instance_id", "base_commit", "repo_path"):
        if not row[key].strip():
            raise TaskError(f"{where}: field '{key}': empty")
    f2p = _test_list(row, "FAIL_TO_PASS", where)
    p2p = _test_list(row, "PASS_TO_PASS", where)
    if not f2p and not p2p:
        raise TaskError(f"{where}: FAIL_TO_PASS and PASS_TO_PASS are both empty: nothing would decide the reward")
    repo_path = _repo_path(row["repo_path"], where, base_dir)
    image = _optional_str(row, "image", where)
    test_cmd = _optional_str(row, "test_cmd", where) or DEFAULT_TEST_CMD
    timeout = row.get("timeout", 300.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise TaskError(f"{where}: field 'timeout': expected a positive number of seconds, got {timeout!r}")
    return SWEInstance(
        instance_id=row["instance_id"],
        repo=row["repo"],
        base_commit=row["base_commit"],
        problem_statement=row["problem_statement"],
        patch=row["patch"],
        test_patch=row["test_patch"],
        fail_to_pass=f2p,
        pass_to_pass=p2p,
        repo_path=repo_path,
        image=image,
        test_cmd=test_cmd,
        timeout=float(timeout),
    )


def _repo_path(value: str, where: str, base_dir: Path | None) -> Path:
    """`repo_path` made absolute (relative to the tasks file) and checked to exist."""
    try:
        path = Path(value).expanduser()
        if not path.is_absolute():
            if base_dir is None:
                raise TaskError(f"{where}: field 'repo_path': {path} is relative and no base directory is known")
            path = base_dir / path
        if path.exists():
            return path.resolve()
    except (OSError, RuntimeError, ValueError) as e:  # an unknown ~user, a NUL byte, a name too long
        raise TaskError(f"{where}: field 'repo_path': {value!r:.200}: {getattr(e, 'strerror', None) or e}") from e
    raise TaskError(f"{where}: field 'repo_path': {path} does not exist")


def _test_list(row: dict, key: str, where: str) -> tuple[str, ...]:
    value = row.get(key)
    if value is None:
        raise TaskError(f"{where}: field '{key}': missing")
    if isinstance(value, str):  # SWE-bench on the HF hub stores these as JSON strings
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise TaskError(f"{where}: field '{key}': a string must hold a JSON list of test ids ({e})") from e
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise TaskError(f"{where}: field '{key}': expected a list of non-empty test id strings, got {value!r:.80}")
    return tuple(value)


def _optional_str(row: dict, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise TaskError(f"{where}: field '{key}': expected a string, got {type(value).__name__}")
    return value or None


def _read_text(path: Path) -> str:
    """The file as text; an unreadable file or one that is not UTF-8 is a TaskError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e.strerror})") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TaskError(f"{path}:{line}: not UTF-8 text") from e


def _jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, value) of each non-blank line."""
    rows = []
    for n, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from e
        except RecursionError as e:
            raise TaskError(f"{path}:{n}: not valid JSON (nested too deeply)") from e
    return rows


def _json_list(path: Path) -> list[tuple[int, Any]]:
    """(line number where it starts, value) of each item of a file holding one JSON list."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    items = []
    pos = _skip_space(text, 0)
    if text[pos : pos + 1] != "[":
        raise TaskError(f"{path}:{_line_at(text, pos)}: expected a JSON list of predictions")
    try:
        pos = _skip_space(text, pos + 1)
        while text[pos : pos + 1] != "]":
            item, end = decoder.raw_decode(text, pos)
            items.append((_line_at(text, pos), item))
            pos = _skip_space(text, end)
            if text[pos : pos + 1] == ",":
                pos = _skip_space(text, pos + 1)
            elif text[pos : pos + 1] != "]":
                raise json.JSONDecodeError("expected ',' or ']'", text, pos)
        if _skip_space(text, pos + 1) != len(text):
            raise json.JSONDecodeError("extra data after the list", text, _skip_space(text, pos + 1))
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
    except RecursionError as e:
        raise TaskError(f"{path}: not valid JSON (nested too deeply)") from e
    return items


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _skip_space(text: str, pos: int) -> int:
    while text[pos : pos + 1].isspace():
        pos += 1
    return pos


def load_instances(path: str | Path) -> list[SWEInstance]:
    """Load and validate a tasks JSONL file; instance ids must be unique."""
    path = Path(path)
    tasks: list[SWEInstance] = []
    seen: dict[str, int] = {}
    for n, row in _jsonl(path):
        task = instance_from_row(row, f"{path}:{n}", base_dir=path.parent)
        if task.instance_id in seen:
            first = seen[task.instance_id]
            raise TaskError(f"{path}:{n}: field 'instance_id': {task.instance_id!r} already used on line {first}")
        seen[task.instance_id] = n
        tasks.append(task)
    return tasks


def load_predictions(path: str | Path, instance_ids: Collection[str] | None = None) -> dict[str, str | None]:
    """instance_id -> model_patch from SWE-bench predictions (JSONL, or a JSON list).

    Every row needs both fields. A null `model_patch` (SWE-bench allows it: the model
    gave no patch) is kept as None; callers grade it as an empty patch and say so.
    `instance_ids`: the ids of the tasks; a prediction for any other is an error.
    """
    path = Path(path)
    rows = _json_list(path) if path.suffix == ".json" else _jsonl(path)
    preds: dict[str, str | None] = {}
    lines: dict[str, int] = {}
    for n, row in rows:
        where = f"{path}:{n}"
        if not isinstance(row, dict):
            raise TaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
        iid = row.get("instance_id")
        if not isinstance(iid, str) or not iid:
            raise TaskError(f"{where}: field 'instance_id': expected a non-empty string, got {iid!r:.80}")
        if iid in lines:
            raise TaskError(f"{where}: field 'instance_id': {iid!r} already predicted on line {lines[iid]}")
        if instance_ids is not None and iid not in instance_ids:
            raise TaskError(f"{where}: field 'instance_id': {iid!r} is not among the tasks")
        if "model_patch" not in row:
            raise TaskError(f"{where}: field 'model_patch': missing (null says the model gave no patch)")
        patch = row["model_patch"]
        if patch is not None and not isinstance(patch, str):
            raise TaskError(f"{where}: field 'model_patch': expected a string or null, got {type(patch).__name__}")
        preds[iid], lines[iid] = patch, n
    return preds
