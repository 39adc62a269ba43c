"""Agent-episode throughput: episodes per second with 1, 4 and 8 in flight, and where an episode's time goes.

The same episodes (the synthetic SWE tasks, cycled) are played at each setting by the same
policy, in a fresh sandbox pool with as many slots as episodes in flight; an episode is
`cispo.envs.agent.run_episode`: a sandbox started and the repository copied in, turns
(sampling, then the tool), the diff graded in another sandbox.

The policy: the benchmark model (`bench/model_common.py`, random weights) samples every
turn for real, from the whole episode so far, on `--engines` built-in sampler engine
actors (`EngineGroup`, `--threads` torch threads each; one engine of one thread by
default), through the job's own `EngineTurns`: the turns episodes ask for while an engine
is busy go out together in its next call, one call per distinct sampling params. Episode
i samples on engine i mod `--engines`, as a job spreads its episodes over
`rollout.num_workers` engines. The turn it hands back is a fixed trajectory, the same
for every setting: look at the repository, apply the gold patch, run the tests, submit.
A random-weight model's tokens are no tool calls; this way sampling costs what these
turns would, and the tools, sandboxes and grading do their real work.

A random-weight model never samples a stop token, so a turn samples its length rounded
up to a multiple of `TURN_BUCKET` tokens: in a job every turn asks for the same
`max_turn_tokens` and ends at its stop token, so turns of any length share a call;
here only turns of one bucket do (the short ones, and the patches), which is the
cautious side.

`--no-sampling` hands the turns back at once: the environment's side alone, what a
policy much faster than this CPU's (a batching engine, a GPU) approaches.

Shares of an episode's time: sampling (its turns' generate calls, queueing for the
engine included), tools (the rest of its turns), sandbox (start and repository copy),
grading, other (snapshot, the final `git diff`). Goal (issue 15): 8 in flight at least
2x one at a time on 2 cores.

    .venv/bin/python bench/agent_rollout.py [--episodes 8] [--in-flight 1 4 8] [--engines 1] [--threads 1]
                                            [--no-sampling]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import ray
import torch
import transformers
from model_common import hf_config

from cispo.envs.agent import AgentConfig, AgentResult, run_episode
from cispo.envs.image import build_base_image
from cispo.envs.pool import SandboxPool
from cispo.envs.agent_format import BUILTIN_FORMAT as FMT
from cispo.envs.swe_agent import reference_trajectory
from cispo.envs.swe_instances import SWEInstance, load_instances
from cispo.envs.swe_synthetic import generate
from cispo.envs.swe_task import SWETask
from cispo.rollout.engines import EngineGroup, EngineSpec
from cispo.rollout.episodes import EngineTurns
from cispo.types import Completion, SamplingParams

CONFIG = AgentConfig(max_turns=8)
PARTS = ("sampling", "tools", "sandbox", "grade", "other")
TURN_BUCKET = 128  # a turn samples its length rounded up to this many tokens (see the module docstring)
TIMEOUT_S = 600.0  # generate deadline of a turn, and of a weight push


def start_engines(checkpoint_dir: str, engines: int, threads: int) -> EngineGroup:
    """`engines` built-in sampler engine actors holding the benchmark model, `threads` torch threads each."""
    torch.manual_seed(0)
    transformers.MiniMaxForCausalLM(hf_config()).save_pretrained(checkpoint_dir)
    spec = EngineSpec("builtin", checkpoint_dir, num_cpus=1.0, num_gpus=0.0, kwargs={"num_threads": threads})
    return EngineGroup(spec, num_workers=engines, generate_timeout_s=TIMEOUT_S, push_timeout_s=TIMEOUT_S)


class TrajectoryPolicy:
    """Samples each turn (its length, bucketed) on the engine, then hands back the trajectory's turn."""

    def __init__(self, turns_on_engine: EngineTurns | None, tokenizer, turns: list[str]):
        self.engine, self.tok, self.turns = turns_on_engine, tokenizer, list(turns)
        self.seconds = 0.0

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        ids = self.tok.encode(self.turns.pop(0), add_special_tokens=False)[: params.max_tokens]
        if self.engine is not None:
            tokens = min(params.max_tokens, math.ceil(len(ids) / TURN_BUCKET) * TURN_BUCKET)
            start = time.perf_counter()
            self.engine.generate(prompts, dataclasses.replace(params, max_tokens=tokens))
            self.seconds += time.perf_counter() - start
        return [[Completion(ids, [0.0] * len(ids), "stop", 0)]]


def trajectory(task: SWEInstance) -> list[str]:
    """Look, apply the gold patch, run the tests, submit."""
    apply = reference_trajectory(task.patch, FMT)[0]  # its first turn
    look = FMT.call("bash", {"command": "git status --short && git ls-files | head -20"})
    run_tests = FMT.call("bash", {"command": f"{task.test_cmd} -q 2>&1 | tail -3"})
    return [look, apply, run_tests, FMT.call("submit", {})]


@dataclasses.dataclass
class Setting:
    in_flight: int
    wall: float
    episodes: list[tuple[AgentResult, float, float]]  # result, its wall seconds, its sampling seconds

    def shares(self) -> dict[str, float]:
        total = sum(wall for _, wall, _ in self.episodes)
        spent = dict.fromkeys(PARTS, 0.0)
        for result, wall, sampling in self.episodes:
            s = result.seconds
            spent["sampling"] += sampling
            spent["tools"] += s.get("turns", 0.0) - sampling
            spent["sandbox"] += s.get("sandbox", 0.0)
            spent["grade"] += s.get("grade", 0.0)
            spent["other"] += wall - s.get("turns", 0.0) - s.get("sandbox", 0.0) - s.get("grade", 0.0)
        return {part: seconds / total for part, seconds in spent.items()}


def play(task: SWEInstance, engine: EngineTurns | None, tokenizer,
         pool: SandboxPool) -> tuple[AgentResult, float, float]:
    policy = TrajectoryPolicy(engine, tokenizer, trajectory(task))
    start = time.perf_counter()
    result = run_episode(task, policy, tokenizer, pool, config=CONFIG)
    return result, time.perf_counter() - start, policy.seconds


def run_setting(in_flight: int, tasks: list[SWEInstance], engines: list[EngineTurns], tokenizer) -> Setting:
    """Episode i samples on engines[i mod len(engines)] (none: turns handed back at once)."""
    engine_of = [engines[i % len(engines)] if engines else None for i in range(len(tasks))]
    with SandboxPool(max_concurrency=in_flight) as pool, ThreadPoolExecutor(in_flight) as threads:
        start = time.perf_counter()
        episodes = list(threads.map(lambda t, e: play(t, e, tokenizer, pool), tasks, engine_of))
        wall = time.perf_counter() - start
    statuses = {r.status for r, _, _ in episodes}
    if statuses != {"resolved"}:
        raise SystemExit(f"{in_flight} in flight: episodes ended {statuses}, expected every one resolved")
    return Setting(in_flight, wall, episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8, help="episodes per setting (the tasks cycled)")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 4, 8], help="settings to compare")
    parser.add_argument("--engines", type=int, default=1, help="built-in sampler engine actors (one CPU each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per engine")
    parser.add_argument("--no-sampling", action="store_true", help="turns handed back at once: the environment alone")
    args = parser.parse_args()
    if args.engines < 1 or args.threads < 1:
        parser.error(f"--engines and --threads must be >= 1, got {args.engines} and {args.threads}")
    build_base_image(if_missing=True)
    with tempfile.TemporaryDirectory() as d:
        synthetic = load_instances(generate(d))
        tasks = [synthetic[i % len(synthetic)] for i in range(args.episodes)]
        tokenizer, turns = SWETask.build_tokenizer(), []
        if not args.no_sampling:
            ray.init(num_cpus=max(2, args.engines), include_dashboard=False, log_to_driver=False)
            engines = start_engines(f"{d}/policy", args.engines, args.threads)
            turns = [EngineTurns(engines, i, TIMEOUT_S, threading.Event()) for i in range(args.engines)]
        settings = [run_setting(n, tasks, turns, tokenizer) for n in args.in_flight]
        if turns:
            engines.shutdown()
    base = settings[0]
    policy = ("no sampling" if args.no_sampling else
              f"sampled on {args.engines} engine(s) of {args.threads} thread(s), turns batched")
    print(f"{args.episodes} episodes per setting, {policy}; shares of the episodes' summed time")
    print(f"{'in flight':>9} {'episodes/s':>10} {'vs ' + str(base.in_flight):>6} {'episode s':>9} "
          + " ".join(f"{p:>8}" for p in PARTS))
    for s in settings:
        rate, mean = len(s.episodes) / s.wall, sum(w for _, w, _ in s.episodes) / len(s.episodes)
        shares = " ".join(f"{share:>8.0%}" for share in s.shares().values())
        print(f"{s.in_flight:>9} {rate:>10.3f} {rate / (len(base.episodes) / base.wall):>5.2f}x {mean:>9.2f} {shares}")


if __name__ == "__main__":
    main()
