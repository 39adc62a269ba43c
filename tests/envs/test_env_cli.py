"""`cispo-env score` as a user runs it: the installed command in a subprocess, its console
lines, its exit status and its report, grading in real sandboxes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interrupts import sigint_default

CLI = Path(sys.executable).parent / "cispo-env"


def _tasks_file(synthetic) -> Path:
    return next(iter(synthetic.values())).repo_path.parent / "tasks.jsonl"


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _score(tasks: Path, preds: Path, out: Path | str, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [CLI, "score", "--tasks", tasks, "--predictions", preds, "--out", out]
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, env=env)


def _git_binary_diff(tmp_path: Path, name: str, data: bytes, *diff_args: str) -> str:
    """The diff real git writes for a new binary file `name`."""
    repo = tmp_path / "binary-repo"
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_bytes(data)
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", name], check=True)
    return subprocess.run([*git, "diff", "--cached", *diff_args], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("out, why", [("/proc/nope/report.json", "No such file or directory"), (None, "Is a directory")])
def test_an_out_that_cannot_be_written_fails_before_grading(synthetic, tmp_path, out, why):
    """`out`: a path in a directory that cannot exist, or None for a directory (tmp_path itself)."""
    preds = _jsonl(tmp_path / "preds.jsonl", [{"instance_id": iid, "model_patch": t.patch} for iid, t in synthetic.items()])
    out = out or tmp_path
    start = time.monotonic()
    run = _score(_tasks_file(synthetic), preds, out)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", f"cispo-env score: --out {out}: cannot write ({why})\n")
    assert time.monotonic() - start < 20  # nothing was graded: grading all would start sandboxes
    assert list(tmp_path.iterdir()) == [preds]  # no partial file left behind


def test_the_report_is_rewritten_as_instances_are_graded_and_kept_on_interrupt(synthetic, tmp_path):
    ids = sorted(synthetic)
    preds = _jsonl(tmp_path / "preds.jsonl", [{"instance_id": iid, "model_patch": synthetic[iid].patch} for iid in ids])
    out = tmp_path / "report.json"
    argv = [CLI, "score", "--tasks", _tasks_file(synthetic), "--predictions", preds, "--out", out, "--workers", "1"]
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    seen = []  # each distinct summary the report held while the run went on
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if out.exists():
            summary = json.loads(out.read_text())["summary"]  # always whole: written beside and renamed over
            if summary not in seen:
                seen.append(summary)
            if 0 < summary["graded"] < len(ids):
                proc.send_signal(signal.SIGINT)
                break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=240)
    partial = [s for s in seen if 0 < s["graded"] < len(ids)]
    assert partial and partial[0]["pending"] == len(ids) - partial[0]["graded"], seen
    report = json.loads(out.read_text())
    graded = report["summary"]["graded"]
    assert proc.returncode == 130 and stdout == ""
    assert stderr.splitlines()[-1] == f"cispo-env score: interrupted: {graded} of {len(ids)} graded, in {out}"
    assert graded >= 1 and report["summary"]["pending"] == len(ids) - graded
    assert {r["status"] for r in report["instances"].values()} == {"resolved"} and len(report["instances"]) == graded


def test_a_null_model_patch_is_graded_empty_counted_and_warned_about(synthetic, tmp_path):
    preds = _jsonl(tmp_path / "preds.jsonl", [{"instance_id": "synthetic__slugs-1", "model_patch": None}])
    out = tmp_path / "report.json"
    run = _score(_tasks_file(synthetic), preds, out)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ("cispo-env score: warning: model_patch is null for 1 prediction(s), graded as empty patches: "
                          "synthetic__slugs-1\n")
    assert run.stdout.splitlines()[-1].startswith("cispo-env score: 0/1 resolved, 0 infra errors, 1 null model_patch graded as empty")
    report = json.loads(out.read_text())
    assert report["summary"]["null_patch"] == 1 and report["summary"]["pending"] == 0
    row = report["instances"]["synthetic__slugs-1"]
    assert (row["status"], row["patch_method"]) == ("unresolved", "none")


def test_git_binary_patches_are_applied_and_dataless_ones_named(synthetic, tmp_path):
    blob = bytes(range(256)) * 4
    binary = _git_binary_diff(tmp_path, "data/blob.bin", blob, "--binary")
    dataless = _git_binary_diff(tmp_path, "data/blob.bin", blob)
    assert "GIT binary patch" in binary and "Binary files /dev/null and b/data/blob.bin differ" in dataless
    preds = _jsonl(tmp_path / "preds.jsonl", [
        {"instance_id": "synthetic__statkit-1", "model_patch": binary},  # a binary file alone: applied, fixes nothing
        {"instance_id": "synthetic__stacks-1", "model_patch": synthetic["synthetic__stacks-1"].patch + binary},
        {"instance_id": "synthetic__slugs-1", "model_patch": dataless},
    ])
    out = tmp_path / "report.json"
    run = _score(_tasks_file(synthetic), preds, out)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["instances"]
    got = {iid: (r["status"], r["patch_method"]) for iid, r in rows.items()}
    assert got == {
        "synthetic__statkit-1": ("unresolved", "git_apply"),
        "synthetic__stacks-1": ("resolved", "git_apply"),
        "synthetic__slugs-1": ("patch_failed", ""),
    }
    assert rows["synthetic__slugs-1"]["error"].startswith(
        "refused: line 4: data/blob.bin: binary patches without their data are not supported")


def _task_row(synthetic, **changes) -> str:
    """statkit-1's row with `changes` (... removes a field), repo_path made absolute."""
    row = json.loads(_tasks_file(synthetic).read_text().splitlines()[0])
    row = {**row, "repo_path": str(synthetic["synthetic__statkit-1"].repo_path), **changes}
    return json.dumps({k: v for k, v in row.items() if v is not ...})


PRED = {"instance_id": "synthetic__statkit-1", "model_patch": ""}


@pytest.mark.parametrize(
    "tasks, preds, where, what",
    [
        ([], [PRED], "tasks.jsonl", "cannot read (No such file or directory)"),
        ([lambda s: _task_row(s), lambda s: _task_row(s, base_commit=...)], [PRED],
         "tasks.jsonl:2", "field 'base_commit': missing"),
        ([lambda s: _task_row(s, FAIL_TO_PASS=5)], [PRED], "tasks.jsonl:1", "field 'FAIL_TO_PASS': expected a list"),
        ([lambda s: _task_row(s, timeout=float("nan"))], [PRED], "tasks.jsonl:1", "field 'timeout': expected a positive"),
        ([lambda s: _task_row(s, repo_path="~nosuchuser/r")], [PRED], "tasks.jsonl:1", "field 'repo_path': '~nosuchuser/r'"),
        ([lambda s: _task_row(s, repo_path="x" * 300)], [PRED], "tasks.jsonl:1", "field 'repo_path': 'xxx"),
        ([lambda s: _task_row(s), lambda s: "", lambda s: "{oops"], [PRED], "tasks.jsonl:3", "not valid JSON"),
        (None, [PRED, {"instance_id": "synthetic__slugs-1"}], "preds.jsonl:2", "field 'model_patch': missing"),
        (None, [{"instance_id": "synthetic__statkit-1", "model_patch": 1}], "preds.jsonl:1",
         "field 'model_patch': expected a string or null, got int"),
        (None, [PRED, {"instance_id": "nope", "model_patch": ""}], "preds.jsonl:2",
         "field 'instance_id': 'nope' is not among the tasks"),
        (None, [PRED, {"instance_id": 7, "model_patch": ""}], "preds.jsonl:2", "field 'instance_id': expected a non-empty"),
        (None, [PRED, PRED], "preds.jsonl:2", "field 'instance_id': 'synthetic__statkit-1' already predicted on line 1"),
        (None, '[\n  {"instance_id": "synthetic__statkit-1", "model_patch": ""},\n  {"model_patch": ""}\n]',
         "preds.json:3", "field 'instance_id': expected a non-empty string"),
        (None, b'{"instance_id": "synthetic__statkit-1", "model_patch": "\xff"}\n', "preds.jsonl:1", "not UTF-8 text"),
    ],
)
def test_bad_task_and_prediction_files_are_one_line_naming_file_line_and_field(synthetic, tmp_path, tasks, preds, where, what):
    """`tasks`: row makers for a tasks file, [] for none at all, None for the synthetic set's."""
    tasks_path = _tasks_file(synthetic) if tasks is None else tmp_path / "tasks.jsonl"
    if tasks:
        tasks_path.write_text("".join(make(synthetic) + "\n" for make in tasks))
    preds_path = tmp_path / ("preds.json" if isinstance(preds, str) else "preds.jsonl")
    if isinstance(preds, list):
        _jsonl(preds_path, preds)
    elif isinstance(preds, str):
        preds_path.write_text(preds)
    else:
        preds_path.write_bytes(preds)
    run = _score(tasks_path, preds_path, tmp_path / "report.json")
    assert (run.returncode, run.stdout) == (2, ""), run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(f"cispo-env score: {tmp_path / where}: {what}"), run.stderr
    assert not (tmp_path / "report.json").exists()


def test_no_docker_daemon_is_an_infra_error_exit_1(synthetic, tmp_path):
    preds = _jsonl(tmp_path / "preds.jsonl", [PRED])
    run = _score(_tasks_file(synthetic), preds, tmp_path / "report.json",
                 env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"})
    assert (run.returncode, run.stdout, run.stderr.count("\n")) == (1, "", 1), run.stderr
    assert run.stderr.startswith("cispo-env score: no Docker daemon answers")
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["pending"] == 1
