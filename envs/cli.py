"""`cispo-env`: build the sandbox image, score predictions, write the synthetic task set."""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cispo.envs.docker_daemon import InfraError
from cispo.envs.grading import GradeResult, grade
from cispo.envs.image import DEFAULT_IMAGE, build_base_image
from cispo.envs.pool import SandboxPool
from cispo.envs.sandbox import SandboxConfig
from cispo.envs.swe_synthetic import generate
from cispo.envs.swe_instances import TaskError, load_predictions, load_instances


def _build_image(args: argparse.Namespace) -> int:
    report = build_base_image(args.name, if_missing=args.if_missing)
    verb = "built" if report.built else "already present:"
    print(f"cispo-env: {verb} {report.name} ({report.image_id[:19]})")
    return 0


def _score(args: argparse.Namespace) -> int:
    tasks = {t.instance_id: t for t in load_instances(args.tasks)}
    preds = load_predictions(args.predictions)
    unknown = sorted(set(preds) - set(tasks))
    if unknown:
        raise TaskError(f"{args.predictions}: predictions for instances not in {args.tasks}: {', '.join(unknown[:5])}")
    config = SandboxConfig(image=args.image) if args.image else SandboxConfig()
    with SandboxPool(config, max_concurrency=args.workers) as pool:
        with ThreadPoolExecutor(args.workers) as ex:
            results = list(ex.map(lambda iid: grade(tasks[iid], preds[iid], pool), sorted(preds)))
    report = _report(results, missing=len(tasks) - len(preds))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    s = report["summary"]
    print(f"cispo-env score: {s['resolved']}/{s['graded']} resolved, {s['infra_error']} infra errors -> {args.out}")
    return 0


def _report(results: list[GradeResult], missing: int) -> dict:
    """Per instance status, reward, tests, seconds; NaN (infra errors) written as null."""
    instances = {}
    for r in results:
        row = r.to_dict()
        del row["instance_id"]
        for key in ("reward", "fraction"):
            row[key] = None if math.isnan(row[key]) else row[key]
        instances[r.instance_id] = row
    summary = {"graded": len(results), "without_prediction": missing}
    for status in ("resolved", "unresolved", "patch_failed", "timeout", "infra_error"):
        summary[status] = sum(r.status == status for r in results)
    return {"summary": summary, "instances": instances}


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

    p = sub.add_parser("score", help="grade SWE-bench style predictions in sandboxes")
    p.add_argument("--tasks", required=True, help="tasks JSONL (SWE-bench fields + repo_path)")
    p.add_argument("--predictions", required=True, help='JSONL (or JSON list) of {"instance_id", "model_patch"}')
    p.add_argument("--out", required=True, help="report JSON to write")
    p.add_argument("--workers", type=int, default=2, help="instances graded at once (default 2)")
    p.add_argument("--image", help=f"default sandbox image for tasks naming none (default {DEFAULT_IMAGE})")
    p.set_defaults(func=_score)

    p = sub.add_parser("synthetic", help="write the synthetic SWE task set (bundles + tasks.jsonl) into DIR")
    p.add_argument("dir", help="output directory")
    p.set_defaults(func=_synthetic)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InfraError, RuntimeError, OSError) as e:
        print(f"cispo-env {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
