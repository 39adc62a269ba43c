"""Sandbox benchmark: warm pool vs a cold container per episode, side by side in one run.

An episode grades the gold patch of a synthetic SWE task (repository in, patch
applied, tests run). Overhead is everything but the test process itself (timed in
the sandbox): sandbox start-up or reset, the exec, unpacking, patching, the verdict,
removal. A warm sandbox resets itself at the end of the grading's exec and then starts
the next grading's controller on standby; a block's wall time waits for the last of
these. That background work overlaps the next episode's tests, so the test time is
shown per mode, and a second ratio counts the warm tests' excess over the cold ones
as warm overhead. Sequential episodes on one slot measure overhead, warm and cold alternating
in blocks so that a shared machine's load falls on both alike; then 32 concurrent
scoring requests (2 slots, as on a 2-core machine) must all succeed.

    .venv/bin/python bench/sandbox.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cispo.envs.grading import GradeResult, grade
from cispo.envs.image import build_base_image
from cispo.envs.pool import SandboxPool
from cispo.envs.swe_synthetic import generate
from cispo.envs.swe_instances import load_instances


@dataclass
class Mode:
    """One way of getting a sandbox per episode, measured block by block."""

    pool: SandboxPool
    wall: float = 0.0
    results: list[GradeResult] = field(default_factory=list)

    def run_block(self, tasks) -> None:
        start = time.monotonic()
        self.results += [grade(t, t.patch, self.pool) for t in tasks]
        self.pool.drain()  # the block's last reset or removal belongs to it
        self.wall += time.monotonic() - start

    @property
    def rate(self) -> float:
        return len(self.results) / self.wall * 60

    @property
    def test(self) -> float:
        """Mean seconds per episode of the test process, timed in the sandbox."""
        return sum(r.test_seconds for r in self.results) / len(self.results)

    @property
    def overhead(self) -> float:
        """Mean seconds per episode that were not the test process running."""
        return self.wall / len(self.results) - self.test


def sequential(tasks, episodes: int, block: int = 3) -> tuple[Mode, Mode]:
    """Warm pool and cold containers on one slot each, alternating in blocks of `block`
    episodes, so that the load of a shared machine falls on both alike."""
    with SandboxPool(max_concurrency=1) as warm_pool, SandboxPool(max_concurrency=1, reuse=False) as cold_pool:
        warm_pool.prewarm()  # two containers for the one slot: one is reset while the other works
        for t in tasks:  # build every task's repository snapshot (cached on the host, used by both modes)
            grade(t, t.patch, warm_pool)
        warm_pool.drain()
        warm, cold = Mode(warm_pool), Mode(cold_pool)
        order = (tasks * episodes)[:episodes]
        for i in range(0, episodes, block):
            for mode in (warm, cold):
                mode.run_block(order[i : i + block])
    return warm, cold


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
        tasks = load_instances(generate(tmp))
        warm, cold = sequential(tasks, episodes)
        wall, conc_res = concurrent(tasks, requests, slots=2)

    bad = [r for r in warm.results + cold.results + conc_res if r.status != "resolved"]
    print(f"episodes per mode: {episodes} (sequential, 1 slot, modes alternating every 3); "
          f"gold patches of {len(tasks)} synthetic tasks")
    # Per mode: work done in the background (resets, the standby controller's start) must not
    # hide in the test time, which the overhead excludes.
    print("test process: " + ", ".join(f"{name} {mode.test * 1000:.0f}" for name, mode in (("warm", warm), ("cold", cold)))
          + " ms/episode")
    for name, mode in (("warm pool", warm), ("cold", cold)):
        print(f"{name:10s}: {mode.rate:6.1f} episodes/min, overhead {mode.overhead * 1000:6.0f} ms/episode")
    print(f"overhead ratio cold/warm: {cold.overhead / warm.overhead:.1f}x   "
          f"throughput ratio warm/cold: {warm.rate / cold.rate:.1f}x")
    # The conservative reading: a warm sandbox's reset and standby start overlap the next
    # episode's tests, so whatever the warm tests took beyond the cold ones counts as overhead.
    excess = max(warm.test - cold.test, 0.0)
    print(f"counting the warm tests' excess over cold ({excess * 1000:.0f} ms) as overhead: "
          f"warm {(warm.overhead + excess) * 1000:.0f} ms, ratio {cold.overhead / (warm.overhead + excess):.1f}x")
    print(f"concurrent: {requests} requests on 2 slots in {wall:.1f} s, "
          f"{sum(r.status == 'resolved' for r in conc_res)}/{requests} resolved, "
          f"{sum(r.status == 'infra_error' for r in conc_res)} infra errors")
    if bad:
        raise SystemExit(f"{len(bad)} episodes not resolved: {[(r.instance_id, r.status, r.error[:200]) for r in bad[:3]]}")


if __name__ == "__main__":
    main()
