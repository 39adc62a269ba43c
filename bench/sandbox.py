"""Sandbox benchmark: warm pool vs a cold container per episode, side by side in one run.

An episode grades the gold patch of a synthetic SWE task (repository in, patch
applied, tests run). Overhead is everything but the test run itself: sandbox
start-up or reset, unpacking, patching, removal. Sequential episodes on one slot
measure overhead; then 32 concurrent scoring requests (2 slots, as on a 2-core
machine) must all succeed.

    .venv/bin/python bench/sandbox.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from cispo.envs.grading import GradeResult, grade
from cispo.envs.image import build_base_image
from cispo.envs.pool import SandboxPool
from cispo.envs.swe_synthetic import generate
from cispo.envs.tasks import load_tasks


def sequential(tasks, episodes: int, reuse: bool) -> tuple[float, float, list[GradeResult]]:
    """Episodes per minute and mean overhead (wall minus test time) for one slot."""
    with SandboxPool(max_concurrency=1, reuse=reuse) as pool:
        if reuse:
            pool.prewarm()  # two containers for the one slot: one is reset while the other works
        grade(tasks[0], tasks[0].patch, pool)  # warm the host-side repository cache for both modes
        start = time.monotonic()
        results = [grade(t, t.patch, pool) for t in (tasks * episodes)[:episodes]]
        pool.drain()  # the last reset or removal belongs to the run
        wall = time.monotonic() - start
    test_time = sum(r.test_seconds for r in results)
    return episodes / wall * 60, (wall - test_time) / episodes, results


def concurrent(tasks, requests: int, slots: int) -> tuple[float, list[GradeResult]]:
    with SandboxPool(max_concurrency=slots) as pool:
        start = time.monotonic()
        with ThreadPoolExecutor(requests) as ex:
            results = list(ex.map(lambda t: grade(t, t.patch, pool), (tasks * requests)[:requests]))
        return time.monotonic() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes (CI smoke run)")
    args = parser.parse_args()
    episodes, requests = (6, 32) if args.quick else (24, 32)

    build_base_image(if_missing=True)
    with tempfile.TemporaryDirectory() as tmp:
        tasks = load_tasks(generate(tmp))
        warm_rate, warm_over, warm_res = sequential(tasks, episodes, reuse=True)
        cold_rate, cold_over, cold_res = sequential(tasks, episodes, reuse=False)
        wall, conc_res = concurrent(tasks, requests, slots=2)

    bad = [r for r in warm_res + cold_res + conc_res if r.status != "resolved"]
    print(f"episodes per mode: {episodes} (sequential, 1 slot); gold patches of {len(tasks)} synthetic tasks")
    print(f"warm pool : {warm_rate:6.1f} episodes/min, overhead {warm_over * 1000:6.0f} ms/episode")
    print(f"cold      : {cold_rate:6.1f} episodes/min, overhead {cold_over * 1000:6.0f} ms/episode")
    print(f"overhead ratio cold/warm: {cold_over / warm_over:.1f}x   throughput ratio warm/cold: {warm_rate / cold_rate:.1f}x")
    print(f"concurrent: {requests} requests on 2 slots in {wall:.1f} s, "
          f"{sum(r.status == 'resolved' for r in conc_res)}/{requests} resolved, "
          f"{sum(r.status == 'infra_error' for r in conc_res)} infra errors")
    if bad:
        raise SystemExit(f"{len(bad)} episodes not resolved: {[(r.instance_id, r.status, r.error[:200]) for r in bad[:3]]}")


if __name__ == "__main__":
    main()
