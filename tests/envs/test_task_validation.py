"""Task validation on real (tiny) task repositories graded in real sandboxes: a good task,
broken ones (gold that fixes nothing, a FAIL_TO_PASS test that needs no fix, a
PASS_TO_PASS test the gold breaks), a flaky one, one leaning on the time zone, locale and
hash order; and `cispo-env validate` as a user runs it."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cispo.envs.swe_synthetic import SPECS, build_task
from cispo.envs.task_validation import CHECKS, validate_tasks

CLI = Path(sys.executable).parent / "cispo-env"
STATKIT = next(s for s in SPECS if s.name == "statkit")
MEAN, TOTAL, NOTHING = (f"tests/test_stats.py::{name}" for name in ("test_mean", "test_total", "test_mean_of_nothing"))

# statkit with one more test, which its gold fix does not make pass (it raises ZeroDivisionError).
UNFIXED = dataclasses.replace(STATKIT, name="unfixed", new_test_files={"tests/test_stats.py": """
    import pytest

    from statkit import mean, total


    def test_total():
        assert total([1, 2, 3]) == 6


    def test_mean():
        assert mean([2, 4]) == 3.0


    def test_mean_of_nothing():
        with pytest.raises(ValueError):
            mean([])
    """})

# Each test draws a fresh coin from os.urandom, which nothing pins: a test flips between two
# runs half the time, so two runs of 24 such tests agree on every one with chance 2**-24 per patch.
# (A flake cannot be scheduled: every grading gets a clean sandbox and no state of the host.)
COINS = [f"tests/test_coins.py::test_coin[{n}]" for n in range(24)]
FLAKY = dataclasses.replace(STATKIT, name="flaky", pass_to_pass=[TOTAL, *COINS], new_test_files={
    **STATKIT.new_test_files,
    "tests/test_coins.py": """
        import os

        import pytest


        @pytest.mark.parametrize("n", range(24))
        def test_coin(n):
            assert os.urandom(1)[0] % 2
        """,
})

# Tests that pass only when grading pins the time zone, the locale and the hash seed: the set's order
# in pytest's process and in a child process agree only when both have the same PYTHONHASHSEED.
PINNED_TESTS = [f"tests/test_env.py::{name}" for name in ("test_time_zone", "test_locale", "test_hash_order")]
PINNED = dataclasses.replace(STATKIT, name="pinned", pass_to_pass=[TOTAL, *PINNED_TESTS], new_test_files={
    **STATKIT.new_test_files,
    "tests/test_env.py": """
        import locale
        import os
        import subprocess
        import sys
        import time

        WORDS = [f"word{i}" for i in range(32)]


        def test_time_zone():
            assert os.environ["TZ"] == "UTC" and time.tzname == ("UTC", "UTC")


        def test_locale():
            assert os.environ["LC_ALL"] == os.environ["LANG"] == "C.UTF-8"
            assert locale.setlocale(locale.LC_ALL, "") == "C.UTF-8"


        def test_hash_order():
            assert os.environ["PYTHONHASHSEED"] == "0"
            child = subprocess.run([sys.executable, "-c", f"print(list(set({WORDS!r})))"],
                                   capture_output=True, text=True, check=True)
            assert child.stdout.strip() == str(list(set(WORDS)))
        """,
})


def _only_check_failing(check, name: str) -> bool:
    return check.checks == {c: c != name for c in CHECKS}


def test_a_good_task_passes_every_check(synthetic, pool):
    [check] = validate_tasks([synthetic["synthetic__statkit-1"]], pool, runs=2)
    assert (check.flagged, check.problems, check.tests_at_fault) == (False, [], [])
    assert check.checks == dict.fromkeys(CHECKS, True)
    assert [r.status for r in check.gold] == ["resolved"] * 2 and [r.status for r in check.empty] == ["unresolved"] * 2


@pytest.mark.parametrize("fail_to_pass, pass_to_pass, runs, check_failing, problem, at_fault", [
    ([MEAN, NOTHING], [TOTAL], 2, "gold_resolves",
     f"gold does not resolve: FAIL_TO_PASS {NOTHING} failed in runs 1, 2", NOTHING),
    ([MEAN, TOTAL], [], 1, "empty_fails", f"empty patch passes FAIL_TO_PASS {TOTAL} in run 1", TOTAL),
    ([MEAN], [TOTAL, NOTHING], 1, "pass_to_pass_pass",
     f"PASS_TO_PASS {NOTHING} fails with the gold patch in run 1", NOTHING),
], ids=["gold_fixes_nothing", "passes_unpatched", "gold_breaks_pass_to_pass"])
def test_a_broken_task_is_flagged_naming_the_test_at_fault(make_task, pool, fail_to_pass, pass_to_pass, runs,
                                                           check_failing, problem, at_fault):
    task = make_task(UNFIXED, FAIL_TO_PASS=fail_to_pass, PASS_TO_PASS=pass_to_pass)
    [check] = validate_tasks([task], pool, runs=runs)
    assert check.flagged and [p.text for p in check.problems] == [problem]
    assert check.tests_at_fault == [at_fault] and _only_check_failing(check, check_failing)


def test_a_gold_patch_that_does_not_apply_is_flagged_with_why(make_task, pool):
    # Removed lines the file does not have: no fallback (not even fuzz) can place them.
    task = make_task(STATKIT)
    unplaceable = "\n".join("-no such line " + ln[1:] if ln.startswith("-") and not ln.startswith("---") else ln
                             for ln in task.patch.split("\n"))
    [check] = validate_tasks([dataclasses.replace(task, patch=unplaceable)], pool, runs=1)
    assert [p.text for p in check.problems] == [
        "gold does not resolve in run 1: patch_failed (no method applied the patch)",
        "PASS_TO_PASS not run with the gold patch in run 1",
    ]
    assert check.checks == {"gold_resolves": False, "pass_to_pass_pass": False, "empty_fails": True, "stable": True}
    assert check.tests_at_fault == []


def test_a_flaky_test_is_flagged_as_unstable(make_task, pool):
    [check] = validate_tasks([make_task(FLAKY)], pool, runs=2)
    assert check.flagged and not check.checks["stable"]
    flaky = [p for p in check.problems if p.text.startswith("flaky:")]
    pattern = (r"flaky: tests/test_coins\.py::test_coin\[\d+\] (passed|failed) in run 1, (passed|failed) in run 2 "
               r"\((gold|empty) patch\)")
    assert flaky and all(re.fullmatch(pattern, p.text) and p.tests[0] in COINS for p in flaky), [p.text for p in flaky]
    assert MEAN not in check.tests_at_fault and TOTAL not in check.tests_at_fault


def test_tests_leaning_on_time_zone_locale_and_hash_order_are_stable(make_task, pool):
    [check] = validate_tasks([make_task(PINNED)], pool, runs=2)
    assert check.problems == [], [p.text for p in check.problems]
    assert all(r.tests[t] == "passed" for r in check.gold + check.empty for t in PINNED_TESTS)


def _tasks_file(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _validate(tasks: Path, *args) -> subprocess.CompletedProcess:
    argv = [CLI, "validate", "--tasks", tasks, *args]
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300)


def test_the_cli_exits_0_when_every_task_passes(tmp_path):
    tasks = _tasks_file(tmp_path, [build_task(STATKIT, tmp_path)])
    run = _validate(tasks, "--runs", "1")
    assert (run.returncode, run.stderr) == (0, ""), run.stderr
    assert run.stdout == "cispo-env validate: 1/1 tasks pass every check, 0 flagged (1 run of each patch)\n"


def test_the_cli_exits_1_with_a_line_per_flagged_task_and_reports_every_task(tmp_path):
    good = build_task(STATKIT, tmp_path)
    broken = {**build_task(UNFIXED, tmp_path), "FAIL_TO_PASS": [MEAN, NOTHING], "PASS_TO_PASS": [TOTAL]}
    out = tmp_path / "report.json"
    run = _validate(_tasks_file(tmp_path, [good, broken]), "--runs", "1", "--out", out)
    assert (run.returncode, run.stderr) == (1, ""), run.stderr
    assert run.stdout.splitlines() == [
        f"cispo-env validate: flagged synthetic__unfixed-1: gold does not resolve: FAIL_TO_PASS {NOTHING} failed in run 1",
        f"cispo-env validate: 1/2 tasks pass every check, 1 flagged (1 run of each patch) -> {out}",
    ]
    report = json.loads(out.read_text())
    assert report["summary"] == {"checked": 2, "pending": 0, "runs": 1, "flagged": 1, "gold_resolves": 1,
                                 "pass_to_pass_pass": 2, "empty_fails": 2, "stable": 2}
    tasks = report["tasks"]
    assert (tasks["synthetic__statkit-1"]["flagged"], tasks["synthetic__unfixed-1"]["tests_at_fault"]) == (False, [NOTHING])
    assert [r["status"] for r in tasks["synthetic__unfixed-1"]["gold"]] == ["unresolved"]


def test_the_cli_exits_2_on_bad_input(tmp_path):
    row = build_task(STATKIT, tmp_path)
    del row["base_commit"]
    tasks = _tasks_file(tmp_path, [row])
    run = _validate(tasks)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == f"cispo-env validate: {tasks}:1: field 'base_commit': missing\n"
    good = _tasks_file(tmp_path, [build_task(STATKIT, tmp_path)])
    run = _validate(good, "--out", tmp_path)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == f"cispo-env validate: --out {tmp_path}: cannot write (Is a directory)\n"


def test_a_job_refuses_flagged_tasks_unless_told_to_drop_or_keep_them(tmp_path, monkeypatch):
    import cispo.envs.swe_task as swe_task
    from cispo.config import TaskConfig
    from cispo.envs.swe_instances import TaskError
    from cispo.envs.task import make_task

    monkeypatch.setattr(swe_task, "TASK_CHECKS_CACHE", tmp_path / "cache")
    good = build_task(STATKIT, tmp_path)
    broken = {**build_task(UNFIXED, tmp_path), "FAIL_TO_PASS": [MEAN, NOTHING], "PASS_TO_PASS": [TOTAL]}
    tasks = _tasks_file(tmp_path, [good, broken])
    with pytest.raises(TaskError, match=rf"task.flagged_tasks=refuse: 1 of 2 tasks in .*tasks.jsonl failed "
                                        rf"validation .*{broken['instance_id']}: gold does not resolve"):
        make_task(TaskConfig(name="swe", path=str(tasks)))
    [cached] = (tmp_path / "cache").iterdir()  # the checks are kept: the next job does not grade again
    assert list(json.loads(cached.read_text())) == [broken["instance_id"]]
    dropped = make_task(TaskConfig(name="swe", path=str(tasks), flagged_tasks="drop"))
    assert [r.metadata["instance_id"] for r in dropped.eval_rows()] == [good["instance_id"]]
    kept = make_task(TaskConfig(name="swe", path=str(tasks), flagged_tasks="keep"))
    assert len(kept) == 2
