"""`cispo-env`: build the sandbox image, score predictions, validate tasks, write the synthetic task set."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from cispo.envs.docker_daemon import InfraError
from cispo.envs.grading import GradeResult, grade
from cispo.envs.image import DEFAULT_IMAGE, build_base_image
from cispo.envs.pool import SandboxPool
from cispo.envs.sandbox import SandboxConfig
from cispo.envs.swe_synthetic import generate
from cispo.envs.swe_instances import TaskError, load_predictions, load_instances
from cispo.envs.task_validation import CHECKS, TaskCheck, validate_tasks


SCORE_EPILOG = """\
The report's summary counts graded, pending (not graded yet: a stopped run keeps what
was graded), without_prediction, null_patch and each status.
Exit status: 0 graded (whatever the statuses), 1 Docker or sandbox failure,
2 bad input (a tasks or predictions row, named by file:line and field; an --out
that cannot be written), 130 interrupted.
"""

VALIDATE_EPILOG = """\
Checks, each in every run: the gold patch resolves the task; every PASS_TO_PASS test
passes with it; the empty patch fails every FAIL_TO_PASS test; each patch gets the same
status and per-test outcomes in every run. Tests run with TZ=UTC, LANG=LC_ALL=C.UTF-8
and PYTHONHASHSEED=0. One line per flagged task, then a summary; the report lists
every task, its checks, its problems, the tests at fault and each run's grading.
Exit status: 0 every task passes every check, 1 a task is flagged (or Docker failed:
the last line says which), 2 bad input (as for score), 130 interrupted.
"""


def _build_image(args: argparse.Namespace) -> int:
    report = build_base_image(args.name, if_missing=args.if_missing)
    verb = "built" if report.built else "already present:"
    print(f"cispo-env: {verb} {report.name} ({report.image_id[:19]})")
    return 0


class UsageError(ValueError):
    """An argument that cannot be used (exit status 2, as for a bad tasks or predictions file)."""


def _score(args: argparse.Namespace) -> int:
    tasks = {t.instance_id: t for t in load_instances(args.tasks)}
    preds = load_predictions(args.predictions, instance_ids=tasks)
    out = Path(args.out)
    null = sorted(iid for iid, patch in preds.items() if patch is None)
    if null:
        print(f"cispo-env score: warning: model_patch is null for {len(null)} prediction(s), graded as empty patches: "
              f"{', '.join(null[:5])}{' ...' if len(null) > 5 else ''}", file=sys.stderr)
    results: list[GradeResult] = []

    def report() -> dict:
        return _report(results, pending=len(preds) - len(results), without_prediction=len(tasks) - len(preds),
                       null=set(null))

    def record(result: GradeResult) -> None:
        results.append(result)
        _write_report(out, report())

    _first_report(out, report())
    config = SandboxConfig(image=args.image) if args.image else SandboxConfig()
    try:
        with SandboxPool(config, max_concurrency=args.workers) as pool:
            _grade_all(tasks, preds, pool, args.workers, record)
    except KeyboardInterrupt:
        print(f"cispo-env score: interrupted: {len(results)} of {len(preds)} graded, in {out}", file=sys.stderr)
        return 130
    s = report()["summary"]
    nulls = f", {s['null_patch']} null model_patch graded as empty" if s["null_patch"] else ""
    print(f"cispo-env score: {s['resolved']}/{s['graded']} resolved, {s['infra_error']} infra errors{nulls} -> {out}")
    return 0


def _grade_all(tasks: dict, preds: dict, pool: SandboxPool, workers: int,
               record: Callable[[GradeResult], None]) -> None:
    """Grade every prediction (a null patch as an empty one), `workers` at once, calling `record`
    with each result as it comes. On Ctrl-C the gradings not started are dropped."""
    executor = ThreadPoolExecutor(workers)
    try:
        futures = [executor.submit(grade, tasks[iid], preds[iid] or "", pool) for iid in sorted(preds)]
        for future in as_completed(futures):
            record(future.result())
    finally:
        executor.shutdown(cancel_futures=True)


def _report(results: list[GradeResult], pending: int, without_prediction: int, null: set[str]) -> dict:
    """Per instance status, reward, tests, seconds; NaN (infra errors) written as null.
    `pending`: predictions not graded yet (the report is rewritten after each one)."""
    instances = {}
    for r in sorted(results, key=lambda r: r.instance_id):
        row = r.to_dict()
        del row["instance_id"]
        for key in ("reward", "fraction"):
            row[key] = None if math.isnan(row[key]) else row[key]
        instances[r.instance_id] = row
    summary = {"graded": len(results), "pending": pending, "without_prediction": without_prediction,
               "null_patch": sum(r.instance_id in null for r in results)}
    for status in ("resolved", "unresolved", "patch_failed", "timeout", "infra_error"):
        summary[status] = sum(r.status == status for r in results)
    return {"summary": summary, "instances": instances}


def _first_report(out: Path, report: dict) -> None:
    """Written before any grading: an --out that cannot be written fails now, as bad input."""
    try:
        _write_report(out, report)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write ({e.strerror or e})") from e


def _write_report(out: Path, report: dict) -> None:
    """Written beside `out` and renamed over it, so a run stopped mid-write keeps the last whole report."""
    partial = out.with_name(f".{out.name}.partial")
    try:
        partial.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def _validate(args: argparse.Namespace) -> int:
    tasks = load_instances(args.tasks)
    out = Path(args.out) if args.out else None
    checks: list[TaskCheck] = []

    def report() -> dict:
        return _validation_report(checks, pending=len(tasks) - len(checks), runs=args.runs)

    def record(check: TaskCheck) -> None:
        checks.append(check)
        if check.flagged:
            print(f"cispo-env validate: flagged {check.instance_id}: {_problem_line(check)}", flush=True)
        if out:
            _write_report(out, report())

    if out:
        _first_report(out, report())
    config = SandboxConfig(image=args.image) if args.image else SandboxConfig()
    try:
        with SandboxPool(config, max_concurrency=args.workers) as pool:
            validate_tasks(tasks, pool, runs=args.runs, workers=args.workers, on_checked=record)
    except KeyboardInterrupt:
        print(f"cispo-env validate: interrupted: {len(checks)} of {len(tasks)} tasks checked"
              f"{f', in {out}' if out else ''}", file=sys.stderr)
        return 130
    flagged = sum(c.flagged for c in checks)
    runs = f"{args.runs} run{'s' if args.runs > 1 else ''} of each patch"
    print(f"cispo-env validate: {len(checks) - flagged}/{len(checks)} tasks pass every check, {flagged} flagged "
          f"({runs}){f' -> {out}' if out else ''}")
    return 1 if flagged else 0


def _problem_line(check: TaskCheck, shown: int = 3) -> str:
    """The first `shown` problems, then how many more."""
    more = len(check.problems) - shown
    return "; ".join(p.text for p in check.problems[:shown]) + (f" (+{more} more)" if more > 0 else "")


def _validation_report(checks: list[TaskCheck], pending: int, runs: int) -> dict:
    """Per task its checks, problems, tests at fault and gradings; the summary counts tasks passing
    each check. `pending`: tasks not checked yet (the report is rewritten after each one)."""
    summary = {"checked": len(checks), "pending": pending, "runs": runs, "flagged": sum(c.flagged for c in checks)}
    summary.update({name: sum(c.checks[name] for c in checks) for name in CHECKS})
    tasks = {c.instance_id: c.to_dict() for c in sorted(checks, key=lambda c: c.instance_id)}
    return {"summary": summary, "tasks": tasks}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _synthetic(args: argparse.Namespace) -> int:
    print(f"cispo-env: wrote {generate(args.dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cispo-env", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-image", help="build the base sandbox image with debootstrap + docker import")
    p.add_argument("--name", default=DEFAULT_IMAGE, help=f"image name (default {DEFAULT_IMAGE})")
    p.add_argument("--if-missing", action="store_true", help="do nothing when the image already exists")
    p.set_defaults(func=_build_image)

    p = sub.add_parser("score", help="grade SWE-bench style predictions in sandboxes", epilog=SCORE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", required=True, help="tasks JSONL (SWE-bench fields + repo_path)")
    p.add_argument("--predictions", required=True,
                   help='JSONL (or a .json list) of {"instance_id", "model_patch"}, both required; '
                        "a null model_patch (no patch) is graded as an empty one and counted as null_patch")
    p.add_argument("--out", required=True, help="report JSON, checked before grading and rewritten after each instance")
    p.add_argument("--workers", type=_positive_int, default=2, help="instances graded at once (default 2)")
    p.add_argument("--image", help=f"default sandbox image for tasks naming none (default {DEFAULT_IMAGE})")
    p.set_defaults(func=_score)

    p = sub.add_parser("validate", help="grade each task's gold and empty patch, flag tasks that cannot be trusted",
                       epilog=VALIDATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", required=True, help="tasks JSONL (SWE-bench fields + repo_path), as for score")
    p.add_argument("--out", help="report JSON, checked before grading and rewritten after each task")
    p.add_argument("--workers", type=_positive_int, default=2, help="gradings at once (default 2)")
    p.add_argument("--runs", type=_positive_int, default=2, help="gradings of each patch, compared (default 2)")
    p.add_argument("--image", help=f"default sandbox image for tasks naming none (default {DEFAULT_IMAGE})")
    p.set_defaults(func=_validate)

    p = sub.add_parser("synthetic", help="write the synthetic SWE task set (bundles + tasks.jsonl) into DIR")
    p.add_argument("dir", help="output directory")
    p.set_defaults(func=_synthetic)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TaskError, UsageError) as e:
        print(f"cispo-env {args.command}: {e}", file=sys.stderr)
        return 2
    except (InfraError, RuntimeError, OSError) as e:
        print(f"cispo-env {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
