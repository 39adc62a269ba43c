"""Can a task be trusted? Its gold patch and an empty patch, each graded `runs` times.

An SWE-bench audit found most "unsolvable" tasks were environment bugs: tests that
fail whatever the patch, tests that pass with none, tests that flip from run to run.
A task passes four checks, every run counting:

- gold_resolves: the gold patch applies, and every FAIL_TO_PASS test passes with it
  (no timeout, no infra error, nothing wrong with the verdict);
- pass_to_pass_pass: every PASS_TO_PASS test passes with the gold patch;
- empty_fails: the empty patch fails every FAIL_TO_PASS test;
- stable: each patch gets the same status and the same per-test outcomes in every run.

A task failing any is flagged, with one line per problem naming the tests at fault
(`flaky: tests/test_x.py::test_y passed in run 1, failed in run 2 (gold patch)`).
`validate_tasks` is what `cispo-env validate` runs and what a job calls to refuse
flagged tasks. Grading pins the time zone, locale and hash seed of every test run
(`grading_controller.PINNED_ENV`), so a test leaning on those is stable here.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from cispo.envs.docker_daemon import InfraError
from cispo.envs.grading import GradeResult, grade
from cispo.envs.pool import SandboxPool
from cispo.envs.swe_instances import SWEInstance
from cispo.envs.verdict import PASSED

CHECKS = ("gold_resolves", "pass_to_pass_pass", "empty_fails", "stable")
_NO_VERDICT = ("patch_failed", "infra_error")  # statuses under which no test ran


@dataclass(frozen=True)
class Problem:
    check: str  # one of CHECKS
    text: str  # one line for a person
    tests: tuple[str, ...] = ()  # the tests at fault, if tests are


@dataclass
class TaskCheck:
    """What validation found for one task; `gold` and `empty` hold one grading per run."""

    instance_id: str
    gold: list[GradeResult]
    empty: list[GradeResult]
    problems: list[Problem] = field(default_factory=list)

    @property
    def checks(self) -> dict[str, bool]:
        return {name: not any(p.check == name for p in self.problems) for name in CHECKS}

    @property
    def flagged(self) -> bool:
        return bool(self.problems)

    @property
    def tests_at_fault(self) -> list[str]:
        return list(dict.fromkeys(t for p in self.problems for t in p.tests))

    def to_dict(self) -> dict[str, Any]:
        return {"flagged": self.flagged, "checks": self.checks, "problems": [p.text for p in self.problems],
                "tests_at_fault": self.tests_at_fault,
                "gold": [_run_row(r) for r in self.gold], "empty": [_run_row(r) for r in self.empty]}


def validate_tasks(instances: list[SWEInstance], pool: SandboxPool, runs: int = 2, workers: int = 2,
                   on_checked: Callable[[TaskCheck], None] | None = None) -> list[TaskCheck]:
    """Grade each task's gold and empty patch `runs` times, `workers` gradings at once, and check
    the results; `on_checked` gets each task's TaskCheck as soon as its gradings are done.
    Returns the checks in the order of `instances`. On Ctrl-C the gradings not started are dropped."""
    gradings = {(task.instance_id, patch): [] for task in instances for patch in ("gold", "empty")}
    tasks = {task.instance_id: task for task in instances}
    checks: dict[str, TaskCheck] = {}
    executor = ThreadPoolExecutor(workers)
    try:
        futures = {executor.submit(grade, task, task.patch if patch == "gold" else "", pool): (task.instance_id, patch)
                   for task in instances for _ in range(runs) for patch in ("gold", "empty")}
        for future in as_completed(futures):
            iid, patch = futures[future]
            gradings[iid, patch].append(future.result())
            if len(gradings[iid, "gold"]) == len(gradings[iid, "empty"]) == runs:
                checks[iid] = check_task(tasks[iid], gradings[iid, "gold"], gradings[iid, "empty"])
                if on_checked is not None:
                    on_checked(checks[iid])
    finally:
        executor.shutdown(cancel_futures=True)
    return [checks[task.instance_id] for task in instances]


def check_task(task: SWEInstance, gold: list[GradeResult], empty: list[GradeResult]) -> TaskCheck:
    """The four checks on `task`'s gradings (one per run of each patch)."""
    problems = [*_gold_resolves(task, gold), *_pass_to_pass_pass(task, gold), *_empty_fails(task, empty),
                *_stable(task, gold, "gold patch"), *_stable(task, empty, "empty patch")]
    return TaskCheck(task.instance_id, gold, empty, problems)


def _gold_resolves(task: SWEInstance, gold: list[GradeResult]) -> list[Problem]:
    failed = _runs_where(gold, task.fail_to_pass, lambda outcome: outcome != PASSED)
    problems = [Problem("gold_resolves", f"gold does not resolve: FAIL_TO_PASS {t} failed in {_runs(n)}", (t,))
                for t, n in failed.items()]
    # Failed for a reason beyond the tests' outcomes: the patch, a timeout, the sandbox, the verdict's error.
    other = _runs_where_status(gold, lambda r: r.status in ("patch_failed", "timeout", "infra_error") or bool(r.error))
    return problems + [Problem("gold_resolves", f"gold does not resolve in {_runs(n)}: {why}")
                       for why, n in other.items()]


def _pass_to_pass_pass(task: SWEInstance, gold: list[GradeResult]) -> list[Problem]:
    failed = _runs_where(gold, task.pass_to_pass, lambda outcome: outcome != PASSED)
    problems = [Problem("pass_to_pass_pass", f"PASS_TO_PASS {t} fails with the gold patch in {_runs(n)}", (t,))
                for t, n in failed.items()]
    not_run = [n for n, r in enumerate(gold, 1) if r.status in _NO_VERDICT]
    if task.pass_to_pass and not_run:
        problems.append(Problem("pass_to_pass_pass", f"PASS_TO_PASS not run with the gold patch in {_runs(not_run)}"))
    return problems


def _empty_fails(task: SWEInstance, empty: list[GradeResult]) -> list[Problem]:
    passed = _runs_where(empty, task.fail_to_pass, lambda outcome: outcome == PASSED)
    problems = [Problem("empty_fails", f"empty patch passes FAIL_TO_PASS {t} in {_runs(n)}", (t,))
                for t, n in passed.items()]
    not_graded = _runs_where_status(empty, lambda r: r.status in _NO_VERDICT)
    return problems + [Problem("empty_fails", f"empty patch not graded in {_runs(n)}: {why}")
                       for why, n in not_graded.items()]


def _stable(task: SWEInstance, results: list[GradeResult], patch: str) -> list[Problem]:
    """The same status, and the same outcome of each test, in every run (of those where tests ran)."""
    problems = []
    statuses = [(n, r.status) for n, r in enumerate(results, 1)]
    if len({status for _, status in statuses}) > 1:
        problems.append(Problem("stable", f"unstable: the {patch} was graded {_outcomes(statuses)}"))
    ran = [(n, r) for n, r in enumerate(results, 1) if r.status not in _NO_VERDICT]
    for t in task.test_ids:
        outcomes = [(n, r.tests.get(t, "missing")) for n, r in ran]
        if len({outcome for _, outcome in outcomes}) > 1:
            problems.append(Problem("stable", f"flaky: {t} {_outcomes(outcomes)} ({patch})", (t,)))
    return problems


def _runs_where(results: list[GradeResult], tests: Iterable[str], bad: Callable[[str], bool]) -> dict[str, list[int]]:
    """test -> the runs (numbered from 1) in which its outcome was `bad`; runs where no test ran are left out."""
    where: dict[str, list[int]] = {}
    for n, r in enumerate(results, 1):
        if r.status in _NO_VERDICT:
            continue
        for t in tests:
            if bad(r.tests.get(t, "missing")):
                where.setdefault(t, []).append(n)
    return where


def _runs_where_status(results: list[GradeResult], which: Callable[[GradeResult], bool]) -> dict[str, list[int]]:
    """"status (the error's first line)" -> the runs (numbered from 1) that ended so, of those `which` picks."""
    where: dict[str, list[int]] = defaultdict(list)
    for n, r in enumerate(results, 1):
        if not which(r):
            continue
        why = r.error.strip().splitlines()[0].rstrip(":") if r.error.strip() else ""
        where[f"{r.status} ({why})" if why else r.status].append(n)
    return where


def _runs(numbers: list[int]) -> str:
    return f"run {numbers[0]}" if len(numbers) == 1 else "runs " + ", ".join(map(str, numbers))


def _outcomes(by_run: list[tuple[int, str]]) -> str:
    """(run, outcome) pairs as "passed in run 1, failed in run 2"."""
    runs: dict[str, list[int]] = defaultdict(list)
    for n, outcome in by_run:
        runs[outcome].append(n)
    return ", ".join(f"{outcome} in {_runs(n)}" for outcome, n in runs.items())


def _run_row(result: GradeResult) -> dict[str, Any]:
    return {"status": result.status, "error": result.error, "seconds": round(result.seconds, 3),
            "tests": result.tests, "log": result.log}


def flagged_tasks(tasks_path: Path, instances: list[SWEInstance], cache_dir: Path, runs: int = 2) -> dict[str, str]:
    """instance_id -> its first problem, for the flagged tasks of a tasks file. The checks are cached in
    `cache_dir` under a digest of the file and the repositories it names, so a job checks a set once."""
    digest = hashlib.sha256(Path(tasks_path).read_bytes())
    for repo in sorted({str(task.repo_path) for task in instances}):
        stat = Path(repo).stat() if Path(repo).exists() else None
        digest.update(f"{repo}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}".encode())
    cached = Path(cache_dir) / f"{digest.hexdigest()[:24]}-runs{runs}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    with SandboxPool(max_concurrency=2) as pool:
        checks = validate_tasks(instances, pool, runs=runs)
    if any(r.status == "infra_error" for c in checks for r in c.gold + c.empty):
        raise InfraError(f"{tasks_path}: Docker failed while checking the tasks; nothing was cached, try again")
    flagged = {c.instance_id: c.problems[0].text for c in checks if c.flagged}
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(flagged, indent=1) + "\n")
    return flagged
