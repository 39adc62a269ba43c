"""Grading real patches on real (tiny) repositories: gold, empty, broken, fuzzed, hacked."""

import dataclasses
import json
import math
import os
import subprocess
import tarfile
import threading
import time

import docker.errors
import pytest

from cispo.envs import docker_daemon, sandbox
from cispo.envs.cli import main as cli
from cispo.envs.grading import grade
from cispo.envs.repo import snapshot
from cispo.envs.swe import patch_reward, render_patch_prompt
from cispo.envs.pool import SandboxPool, set_shared_pool
from cispo.envs.sandbox import LABEL
from cispo.envs.verdict import read_verdict, verdict_run
from cispo.reward.worker import normalise_result

FORCE_PASS = """import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.outcome = "passed"
"""


def _add_file(path, text):
    lines = text.splitlines(keepends=True)
    body = "".join("+" + line for line in lines)
    return f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n{body}"


@pytest.mark.parametrize("name", ["statkit", "slugs", "stacks"])
def test_gold_empty_broken(synthetic, pool, name):
    task = synthetic[f"synthetic__{name}-1"]
    gold = grade(task, task.patch, pool)
    assert (gold.status, gold.reward, gold.fraction, gold.patch_method) == ("resolved", 1.0, 1.0, "git_apply")
    assert set(gold.tests) == set(task.test_ids) and set(gold.tests.values()) == {"passed"}

    empty = grade(task, "", pool)
    assert (empty.status, empty.reward, empty.patch_method) == ("unresolved", 0.0, "none")
    assert 0 < empty.fraction < 1  # the PASS_TO_PASS tests still pass
    assert all(empty.tests[t] == "failed" for t in task.fail_to_pass)

    # Removed lines that are not in the file: no fallback (not even fuzz) can place them.
    broken = "\n".join("-no such line " + ln[1:] if ln.startswith("-") and not ln.startswith("---") else ln
                       for ln in task.patch.split("\n"))
    failed = grade(task, broken, pool)
    assert (failed.status, failed.reward) == ("patch_failed", 0.0) and failed.tests == {}


def test_fuzzy_patch_falls_back_to_patch(synthetic, pool):
    task = synthetic["synthetic__statkit-1"]
    fuzzy = task.patch.replace(" def mean(xs):", " def mean(values):")  # a stale context line
    res = grade(task, fuzzy, pool)
    assert (res.status, res.patch_method) == ("resolved", "patch_fuzz")


def test_conftest_forcing_passes_is_removed(synthetic, pool):
    task = synthetic["synthetic__statkit-1"]
    hack = _add_file("conftest.py", FORCE_PASS) + _add_file("tests/conftest.py", FORCE_PASS)
    res = grade(task, hack, pool)
    assert (res.status, res.reward, res.patch_method) == ("unresolved", 0.0, "git_apply")
    assert res.tests["tests/test_stats.py::test_mean"] == "failed"


def test_editing_the_tests_is_undone(synthetic, pool):
    """SWE-bench keeps a model's edits to tests the test patch does not touch; we put them back."""
    task = synthetic["synthetic__slugs-1"]
    cheat = task.test_patch.replace('assert slugify(text) == expected', 'assert True')
    res = grade(task, cheat, pool)
    assert res.status == "unresolved"


@pytest.mark.parametrize("source", ["directory", "tarball"])
def test_repository_sources(make_task, statkit_spec, pool, tmp_path, source):
    task = make_task(statkit_spec, bundle=False)
    if source == "tarball":
        tarball = tmp_path / "statkit.tar.gz"
        with tarfile.open(tarball, "w:gz") as tf:
            tf.add(task.repo_path, arcname="statkit")
        task = type(task)(**{**task.__dict__, "repo_path": tarball})
    assert grade(task, task.patch, pool).status == "resolved"


def test_future_history_is_gone(synthetic, pool):
    task = synthetic["synthetic__statkit-1"]
    heads = subprocess.run(["git", "bundle", "list-heads", str(task.repo_path)], capture_output=True, text=True).stdout
    future = heads.split()[0]
    assert future != task.base_commit
    with pool.sandbox() as sb:
        sb.write_tar(snapshot(task.repo_path, task.base_commit))
        res = sb.exec(["sh", "-c", f"git rev-list --all | wc -l; git cat-file -e {future} || echo absent; "
                       "git log --all --format=%s; ls .git/refs/heads"], workdir="/workspace/repo")
    assert res.output.split("\n")[:3] == ["1", "absent", f"base {task.base_commit}"]


def test_broken_task_and_dead_daemon_are_infra_errors(synthetic, pool, tmp_path, monkeypatch):
    task = synthetic["synthetic__statkit-1"]
    junk = tmp_path / "junk.bundle"
    junk.write_text("not a repository")
    res = grade(type(task)(**{**task.__dict__, "repo_path": junk}), task.patch, pool)
    assert res.status == "infra_error" and math.isnan(res.reward) and "not a git directory" in res.error

    dead = f"unix://{tmp_path}/dead.sock"
    with SandboxPool() as fresh:  # no warm container: it must start one, and the daemon is "down"
        monkeypatch.setattr(sandbox, "connect", lambda: docker_daemon.connect(dead))
        res = grade(task, task.patch, fresh)
    assert res.status == "infra_error" and math.isnan(res.reward) and "no Docker daemon answers" in res.error


def test_controller_kills_leftovers_before_it_becomes_the_reset_shell(pool):
    """A process the tests left behind (same uid) could trace the reset shell, which is
    dumpable, and fake a clean reset: the controller kills them first, while it is not."""
    survivors = ("for d in /proc/[0-9]*; do p=${d#/proc/}; [ -O $d ] && [ $p != $$ ] && [ $p != $PPID ] && cat $d/comm; done; "
                 "echo listed")  # $PPID: coreutils `timeout`, which wraps this exec
    vrun = verdict_run(["true"], b"", ["sh", "-c", "setsid sleep 1000 & setsid sh -c 'sleep 1000' & exit 0"],
                       "/workspace", 10, reset=survivors)
    with pool.sandbox() as sb:
        run = sb.exec(vrun.argv, stdin=vrun.stdin, timeout=30, trusted=True)  # no resets_after: all its output
    assert read_verdict(run.output, vrun.secret, None).prepare_code == 0
    after_verdict = run.output.split(vrun.marker.decode(), 1)[1].split("\n", 1)[1]
    assert after_verdict == "listed\n"  # the reset shell saw no process of its uid but itself and its parent


def _kill_during_tests(times: int) -> threading.Thread:
    """Docker-kill (for real) each of this process's sandboxes once pytest runs in it, `times` times."""

    def killer():
        killed = set()
        while len(killed) < times:
            for c in docker_daemon.connect().containers.list(filters={"label": [LABEL, f"{LABEL}.pid={os.getpid()}"]}):
                if c.id not in killed and c.status == "running" and _runs_pytest(c):
                    c.kill()
                    killed.add(c.id)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


def _runs_pytest(container) -> bool:
    """A process of the container is pytest itself (the grading controller's command line
    names pytest too, until its exec ends: the sandbox's reset included)."""
    try:
        top = container.top()
    except docker.errors.APIError:  # stopped between the listing and now
        return False
    return any(proc[-1].startswith("python3 -m pytest") for proc in top.get("Processes") or [])


@pytest.mark.slow
def test_container_killed_mid_grading_is_retried_once_then_masked(synthetic):
    task = synthetic["synthetic__statkit-1"]
    slow_gold = task.patch.replace("+    return total(xs) / len(xs)", "+    __import__('time').sleep(2)\n+    return total(xs) / len(xs)")
    slow_gold = slow_gold.replace("@@ -3,4 +3,4 @@", "@@ -3,4 +3,5 @@")
    with SandboxPool(max_concurrency=1) as fresh:
        set_shared_pool(fresh)
        assert grade(task, slow_gold, fresh).status == "resolved"  # the slow patch alone is fine

        killer = _kill_during_tests(times=1)
        once = grade(task, slow_gold, fresh)
        killer.join(5)
        assert (once.status, once.reward, once.attempts) == ("resolved", 1.0, 2)

        killer = _kill_during_tests(times=2)
        twice = patch_reward("", f"```diff\n{slow_gold}```", task.to_row())
        killer.join(5)
        assert twice["status"] == "infra_error" and math.isnan(twice["score"]) and twice["attempts"] == 2
        assert "stopped during a command" in twice["error"]
        masked = normalise_result(twice, "patch_reward")  # what the reward worker makes of it
        assert masked.score is None and masked.details["status"] == "infra_error"
        assert fresh.stats.reset_failures >= 3  # every killed container was replaced, not reused


def test_patch_reward_single_shot(synthetic, pool):
    set_shared_pool(pool)
    task = synthetic["synthetic__stacks-1"]
    prompt = render_patch_prompt(task)
    assert "return None" in prompt and "raise IndexError(" not in prompt and "test_pop_empty" not in prompt
    good = patch_reward(prompt, f"Here is the fix:\n```diff\n{task.patch}```\n", task.to_row())
    assert good["score"] == 1.0 and good["status"] == "resolved"
    none = patch_reward(prompt, "I cannot do it.", task.to_row())
    assert none["score"] == 0.0 and none["status"] == "unresolved"
    bad = patch_reward(prompt, "", {**task.to_row(), "FAIL_TO_PASS": 5})
    assert math.isnan(bad["score"]) and bad["status"] == "infra_error" and "FAIL_TO_PASS" in bad["error"]


def test_cli_score_report(synthetic, tmp_path):
    tasks_file = next(iter(synthetic.values())).repo_path.parent / "tasks.jsonl"
    preds = tmp_path / "preds.jsonl"
    t = synthetic
    rows = [
        {"instance_id": "synthetic__statkit-1", "model_patch": t["synthetic__statkit-1"].patch},
        {"instance_id": "synthetic__slugs-1", "model_patch": ""},
        {"instance_id": "synthetic__stacks-1", "model_patch": "--- a/../x\n+++ b/../x\n"},
    ]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report.json"
    assert cli(["score", "--tasks", str(tasks_file), "--predictions", str(preds), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    got = {iid: (r["status"], r["reward"]) for iid, r in report["instances"].items()}
    assert got == {
        "synthetic__statkit-1": ("resolved", 1.0),
        "synthetic__slugs-1": ("unresolved", 0.0),
        "synthetic__stacks-1": ("patch_failed", 0.0),
    }
    first = report["instances"]["synthetic__statkit-1"]
    assert first["tests"] == {"tests/test_stats.py::test_mean": "passed", "tests/test_stats.py::test_total": "passed"}
    assert first["seconds"] > 0 and report["summary"]["resolved"] == 1


UNITTEST_TESTS = {
    "tests/test_stats.py": """
        import unittest

        from statkit import mean, total


        class TestStats(unittest.TestCase):
            def test_total(self):
                self.assertEqual(total([1, 2, 3]), 6)

            def test_mean(self):
                self.assertEqual(mean([2, 4]), 3.0)
        """,
}


def test_unittest_tests_are_graded_per_test_under_pytest(make_task, statkit_spec, pool):
    """unittest.TestCase suites run under pytest; their ids are pytest node ids (file::Class::method)."""
    spec = dataclasses.replace(statkit_spec, new_test_files=UNITTEST_TESTS,
                               fail_to_pass=["tests/test_stats.py::TestStats::test_mean"],
                               pass_to_pass=["tests/test_stats.py::TestStats::test_total"])
    task = make_task(spec)
    assert grade(task, task.patch, pool).status == "resolved"
    empty = grade(task, "", pool)
    assert empty.status == "unresolved" and empty.tests == {"tests/test_stats.py::TestStats::test_mean": "failed",
                                                           "tests/test_stats.py::TestStats::test_total": "passed"}


def test_a_test_cmd_that_does_not_run_pytest_is_named(make_task, statkit_spec, pool):
    """Grading needs pytest's per-test reports: another runner scores 0 and the error says why."""
    spec = dataclasses.replace(statkit_spec, new_test_files=UNITTEST_TESTS, test_cmd="python3 -m unittest",
                               fail_to_pass=["tests.test_stats.TestStats.test_mean"], pass_to_pass=[])
    task = make_task(spec)
    res = grade(task, task.patch, pool)
    assert res.status == "unresolved" and "test_cmd must run pytest" in res.error
