"""SWE-bench instances and predictions in SWE-bench's JSONL shape, validated row by row.

A task row: instance_id, repo, base_commit, problem_statement, patch (the gold fix),
test_patch, FAIL_TO_PASS, PASS_TO_PASS (lists of pytest ids, or SWE-bench's
JSON-encoded strings of lists), plus ours: `repo_path` (an offline source: a git
directory, a git bundle or a tarball of one, relative to the JSONL file), optional
`image` and `test_cmd`. A bad row is reported by file, line and field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
            raise TaskError(f"{where}: missing field '{key}'")
        if not isinstance(row[key], str):
            raise TaskError(f"{where}: field '{key}': expected a string, got {type(row[key]).__name__}")
    for key in ("instance_id", "base_commit", "repo_path"):
        if not row[key].strip():
            raise TaskError(f"{where}: field '{key}' is empty")
    f2p = _test_list(row, "FAIL_TO_PASS", where)
    p2p = _test_list(row, "PASS_TO_PASS", where)
    if not f2p and not p2p:
        raise TaskError(f"{where}: FAIL_TO_PASS and PASS_TO_PASS are both empty: nothing would decide the reward")
    repo_path = Path(row["repo_path"]).expanduser()
    if not repo_path.is_absolute():
        if base_dir is None:
            raise TaskError(f"{where}: field 'repo_path': {repo_path} is relative and no base directory is known")
        repo_path = base_dir / repo_path
    if not repo_path.exists():
        raise TaskError(f"{where}: field 'repo_path': {repo_path} does not exist")
    image = _optional_str(row, "image", where)
    test_cmd = _optional_str(row, "test_cmd", where) or DEFAULT_TEST_CMD
    timeout = row.get("timeout", 300.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
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
        repo_path=repo_path.resolve(),
        image=image,
        test_cmd=test_cmd,
        timeout=float(timeout),
    )


def _test_list(row: dict, key: str, where: str) -> tuple[str, ...]:
    value = row.get(key)
    if value is None:
        raise TaskError(f"{where}: missing field '{key}'")
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


def _jsonl(path: Path) -> list[tuple[int, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from e
    return rows


def load_instances(path: str | Path) -> list[SWEInstance]:
    """Load and validate a tasks JSONL file; instance ids must be unique."""
    path = Path(path)
    tasks: list[SWEInstance] = []
    seen: dict[str, int] = {}
    for n, row in _jsonl(path):
        task = instance_from_row(row, f"{path}:{n}", base_dir=path.parent)
        if task.instance_id in seen:
            raise TaskError(f"{path}:{n}: instance_id {task.instance_id!r} already used on line {seen[task.instance_id]}")
        seen[task.instance_id] = n
        tasks.append(task)
    return tasks


def load_predictions(path: str | Path) -> dict[str, str]:
    """instance_id -> model_patch from SWE-bench predictions (JSONL, or a JSON list).

    A null `model_patch` (SWE-bench allows it) is an empty patch.
    """
    path = Path(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
        if not isinstance(data, list):
            raise TaskError(f"{path}: expected a JSON list of predictions")
        rows = list(enumerate(data, 1))
        where = lambda n: f"{path}: item {n}"  # noqa: E731
    else:
        rows = _jsonl(path)
        where = lambda n: f"{path}:{n}"  # noqa: E731
    preds: dict[str, str] = {}
    for n, row in rows:
        if not isinstance(row, dict):
            raise TaskError(f"{where(n)}: expected a JSON object")
        iid = row.get("instance_id")
        if not isinstance(iid, str) or not iid:
            raise TaskError(f"{where(n)}: field 'instance_id': expected a non-empty string")
        patch = row.get("model_patch")
        if patch is not None and not isinstance(patch, str):
            raise TaskError(f"{where(n)}: field 'model_patch': expected a string or null")
        if iid in preds:
            raise TaskError(f"{where(n)}: instance_id {iid!r} predicted twice")
        preds[iid] = patch or ""
    return preds
