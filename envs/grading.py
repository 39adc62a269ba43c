"""Grading one patch against one task, SWE-bench style, in a clean sandbox.

Order matters: everything the grader trusts happens before any of the model's code
runs. The repository (one commit, no history) and both patches go in with one
streamed archive; the model's patch is applied with fallbacks, protected paths are
put back, the test patch goes in. Only then do the tests run, under a timeout, with
the ids passed as argv (never through a shell string) and pytest's addopts emptied.
All of it is one exec, which after the verdict goes on to reset the sandbox for its
next use (no second exec); per-test outcomes come from the controller's verdict
(`verdict.py`), never from what pytest prints.

Statuses: resolved (reward 1), unresolved (0; `fraction` says how close),
patch_failed (0), timeout (0), infra_error (NaN: the trainer masks it; the episode
says nothing about the model).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cispo.envs.docker_daemon import InfraError
from cispo.envs.patching import PREPARE, UnsafePatch, patch_files, paths_to_restore
from cispo.envs.pool import SandboxPool
from cispo.envs.repo import RepoError, snapshot
from cispo.envs.sandbox import ExecResult, tar_files
from cispo.envs.swe_instances import SWEInstance
from cispo.envs.verdict import PASSED, Verdict, read_verdict, verdict_run

Status = Literal["resolved", "unresolved", "patch_failed", "timeout", "infra_error"]
PYTEST_ARGS = ("-rA", "-p", "no:cacheprovider", "-o", "addopts=")
PREPARE_TIMEOUT = 120.0  # seconds the prepare step (unpack, patching) may take, within the exec's deadline
# The controller's verdict: up to 8 MiB of per-test records (~15k tests) and short tails.
VERDICT_CAP = 12 * 1024 * 1024
# Seconds past prepare + tests until the exec's deadline (then the sandbox's client_grace, then the container is killed).
CONTROLLER_GRACE = 10.0
_MARK = "<<cispo-prepare>> "
REPO = "/workspace/repo"
INFRA_RETRIES = 1  # another sandbox after an infra failure; a second failure is masked (infra_error)


@dataclass
class GradeResult:
    instance_id: str
    status: Status
    reward: float  # 1.0 resolved, 0.0 otherwise, NaN for infra_error
    fraction: float  # share of the listed tests that passed (NaN if they never ran)
    tests: dict[str, str] = field(default_factory=dict)  # test id -> "passed" / "failed"
    seconds: float = 0.0  # the whole grading, sandbox start-up included
    test_seconds: float = 0.0  # of which the test process ran (timed in the sandbox)
    patch_method: str = ""  # git_apply, git_apply_reject, patch_fuzz, none (empty patch)
    error: str = ""  # why, for patch_failed / timeout / infra_error, or why the verdict failed every test
    attempts: int = 1  # sandboxes tried: a container that dies mid-episode is an infra failure, retried once
    log: str = ""  # tail of the tests' output

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grade(task: SWEInstance, model_patch: str, pool: SandboxPool) -> GradeResult:
    """Apply `model_patch` to `task`'s repository and run its FAIL_TO_PASS + PASS_TO_PASS tests."""
    start = time.monotonic()

    def done(status: Status, **kw: Any) -> GradeResult:
        reward = {"resolved": 1.0, "infra_error": math.nan}.get(status, 0.0)
        kw.setdefault("fraction", math.nan)
        return GradeResult(task.instance_id, status, reward, seconds=time.monotonic() - start, **kw)

    try:
        model_files = patch_files(model_patch)
    except UnsafePatch as e:
        return done("patch_failed", error=f"refused: {e}")
    try:
        test_files = patch_files(task.test_patch)
        restore = paths_to_restore(model_files, test_files)
        bundle = _bundle(snapshot(task.repo_path, task.base_commit), model_patch, task.test_patch)
    except (UnsafePatch, RepoError) as e:
        return done("infra_error", error=f"task {task.instance_id} is broken: {e}")

    attempts = 0
    while True:
        attempts += 1
        try:
            run, verdict = _run_in_sandbox(task, bundle, restore, pool)
            break
        except InfraError as e:  # the daemon or the container failed, not the model: once more, fresh
            if attempts == 1 + INFRA_RETRIES:
                return done("infra_error", error=str(e), attempts=attempts)
    if verdict.prepare_code is None and not run.timed_out:
        return done("unresolved", error=verdict.error, log=run.output[-4000:], attempts=attempts)
    marker = _marker(verdict.prepare_output)
    if verdict.prepare_code == 10:
        return done("patch_failed", error=f"no method applied the patch:\n{verdict.prepare_output[-2000:]}",
                    attempts=attempts)
    if verdict.prepare_code is not None and not marker.startswith("applied "):
        why = "test_patch does not apply" if verdict.prepare_code == 11 else f"prepare step exit {verdict.prepare_code}"
        return done("infra_error", error=f"{why}:\n{verdict.prepare_output[-2000:]}", attempts=attempts)
    passed = sum(v == PASSED for v in verdict.tests.values())
    common = dict(fraction=passed / len(task.test_ids), tests=verdict.tests, patch_method=marker.partition(" ")[2],
                  log=verdict.log[-4000:], test_seconds=verdict.test_seconds, attempts=attempts)
    if verdict.timed_out or run.timed_out:
        return done("timeout", error=f"tests ran past {task.timeout:g} s", **common)
    status: Status = "resolved" if passed == len(task.test_ids) and not verdict.error else "unresolved"
    return done(status, error=verdict.error, **common)


def _run_in_sandbox(task: SWEInstance, bundle: bytes, restore: list[str], pool: SandboxPool) -> tuple[ExecResult, Verdict]:
    """One exec in one sandbox: prepare the repository, then (if that worked) run the tests;
    after the verdict the same exec resets the sandbox for its next use."""
    vrun = verdict_run(["sh", "-c", PREPARE, "prepare", *restore], bundle,
                       ["sh", "-c", f'{task.test_cmd} "$@"', "tests", *PYTEST_ARGS, *task.test_ids], REPO, task.timeout)
    with pool.sandbox(task.image) as sb:
        run = sb.exec(vrun.argv, stdin=vrun.stdin, timeout=PREPARE_TIMEOUT + task.timeout + CONTROLLER_GRACE,
                      workdir="/workspace", output_cap=VERDICT_CAP, trusted=True, resets_after=vrun.marker)
    return run, read_verdict(run.output, vrun.secret, task.test_ids)


def _marker(output: str) -> str:
    for line in reversed(output.splitlines()):
        if line.startswith(_MARK):
            return line[len(_MARK) :].strip()
    return ""


def _bundle(repo_tar: bytes, model_patch: str, test_patch: str) -> bytes:
    """The cached repository tar followed by a small tar of .cispo/{model,test}.patch.

    Two archives back to back (unpacked with `tar -i`), so the repository is never re-packed.
    """
    patches = {".cispo/model.patch": _with_newline(model_patch), ".cispo/test.patch": _with_newline(test_patch)}
    return repo_tar + tar_files(patches)


def _with_newline(patch: str) -> str:
    """A diff cut right after its last line fails `git apply` ("corrupt patch")."""
    return patch if not patch or patch.endswith("\n") else patch + "\n"
