"""The single-shot SWE environment: the model answers an issue with a diff, tests grade it.

`patch_reward` has the reward signature `fn(prompt, response, metadata)`; metadata
is the task row (SWE-bench shape, `repo_path` absolute or relative to
`metadata["task_dir"]`). It returns `{"score", "status", ...}`; a failure that is
not the model's (daemon down, broken task) returns score NaN and status
`infra_error`, which the trainer masks instead of training on a 0.
"""

from __future__ import annotations

import io
import math
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from cispo.envs.grading import grade
from cispo.envs.patching import is_protected
from cispo.envs.pool import shared_pool
from cispo.envs.repo import snapshot
from cispo.envs.swe_instances import SWEInstance, TaskError, instance_from_row

_FENCE = re.compile(r"```(?:diff|patch)[ \t]*\n(.*?)```", re.DOTALL)
_SOURCE_SUFFIXES = (".py", ".pyi", ".cfg", ".toml", ".txt", ".md", ".rst", ".ini")


def extract_patch(response: str) -> str:
    """The last ```diff (or ```patch) block of a response; "" when there is none."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else ""


def render_patch_prompt(task: SWEInstance, max_chars: int = 12000) -> str:
    """Issue, repository files (the test files left out) and the answer format.

    Files are listed smallest first until `max_chars`: tiny repositories fit whole,
    large ones give the model the layout and as much source as fits.
    """
    files = _source_files(snapshot(task.repo_path, task.base_commit))
    shown, used = [], 0
    for path, text in sorted(files.items(), key=lambda kv: len(kv[1])):
        block = f"--- {path}\n{text}\n"
        if used + len(block) > max_chars:
            break
        shown.append(block)
        used += len(block)
    listing = "\n".join(sorted(files))
    return (
        f"Fix this issue in the repository {task.repo}.\n\nIssue:\n{task.problem_statement.strip()}\n\n"
        f"Files:\n{listing}\n\n" + "".join(shown) + "\nAnswer with one unified diff (paths a/... b/... from the "
        "repository root) in a ```diff fenced block."
    )


def _source_files(repo_tar: bytes) -> dict[str, str]:
    files = {}
    with tarfile.open(fileobj=io.BytesIO(repo_tar)) as tf:
        for m in tf.getmembers():
            path = PurePosixPath(m.name).relative_to("repo") if m.name != "repo" else PurePosixPath(".")
            if not m.isfile() or path.parts[:1] == (".git",) or is_protected(str(path)):
                continue
            if path.suffix in _SOURCE_SUFFIXES:
                files[str(path)] = tf.extractfile(m).read().decode(errors="replace")
    return files


def instance_from_metadata(metadata: dict[str, Any]) -> SWEInstance:
    base = metadata.get("task_dir")
    where = f"task {metadata.get('instance_id', '?')} (reward metadata)"
    return instance_from_row(metadata, where, base_dir=Path(base) if base else None)


def patch_reward(prompt: str, response: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """Reward of a single-shot answer: 1.0 if the diff in it makes every listed test pass."""
    try:
        task = instance_from_metadata(metadata)
    except TaskError as e:
        return {"score": math.nan, "status": "infra_error", "error": str(e)}
    result = grade(task, extract_patch(response), shared_pool())
    return {
        "score": result.reward,
        "status": result.status,
        "fraction": result.fraction,
        "tests": result.tests,
        "patch_method": result.patch_method,
        "seconds": result.seconds,
        "error": result.error,
        "attempts": result.attempts,
    }
