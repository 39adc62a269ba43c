"""Asynchronous vs synchronous RL steps, side by side in one run: the same job and sample budget.

The job is the default one (`make train`'s config; `--policy dense` swaps in the dense
policy on vLLM). Scoring is slowed down (`bench/slow_reward.py`: a per-sample delay,
two reward workers), the situation async rollouts are for. The same job runs with
trainer.max_staleness 0 (the synchronous driver, whose learner steps with the node's idle
cores: learner.use_idle_cores), 1 and 2; each prints samples/s
(steps' wall time, start-up excluded), its generate/score/learner seconds per step,
and reward against wall-clock. For the async runs a profile follows: the fraction of
the steps' wall clock that generation, scoring and learning were busy
(`output_dir/timeline.jsonl`). The last line is the ratio at staleness 1.

    .venv/bin/python bench/async_vs_sync.py [--quick] [--steps N] [--reward-delay-ms D] [--scoring-calls K]
        [--staleness 0,1,2] [--policy hybrid|dense]

--quick is a smoke check (under a minute): staleness 0 and 1 only, a few steps, no
warm-up; its figures are not the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import ray
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401  (registers the config schema)
from cispo.config import Config, validate
from cispo.rollout.timeline import busy_seconds, read_spans

SLOW_REWARD = f"{Path(__file__).resolve().parent / 'slow_reward.py'}:delayed_addition_reward"


# The default job's policy (the hybrid model on the built-in sampler) or the dense one on vLLM.
POLICIES = {"hybrid": [], "dense": ["model=qwen2_tiny", "rollout=vllm"]}


def job_config(output_dir: str, steps: int, sft_steps: int, max_staleness: int, scoring_calls: int,
               policy: str) -> Config:
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        cfg: Config = OmegaConf.to_object(compose("config", overrides=POLICIES[policy]))
    cfg.trainer.output_dir, cfg.trainer.steps, cfg.trainer.sft_steps = output_dir, steps, sft_steps
    cfg.trainer.save_every, cfg.trainer.max_staleness = 0, max_staleness
    cfg.rollout.scoring_calls_in_flight = scoring_calls
    cfg.reward.fn, cfg.reward.num_workers = SLOW_REWARD, 2
    cfg.logger.mode, cfg.logger.progress_bar = "disabled", False
    return validate(cfg)


def run(output_dir: str, steps: int, sft_steps: int, max_staleness: int, scoring_calls: int, policy: str) -> dict:
    cfg = job_config(output_dir, steps, sft_steps, max_staleness, scoring_calls, policy)
    if max_staleness == 0:
        from cispo.train import train as driver
    else:
        from cispo.train_async import train_async as driver
    result = driver(cfg)
    metrics = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps_m = [m for m in metrics if "reward/mean" in m]
    wall, curve = 0.0, []
    for m in steps_m:
        wall += m["perf/step_s"]
        curve.append((wall, m["reward/mean"]))
    return {"result": result, "curve": curve, "wall": wall,
            "samples": sum(m["rollout/groups"] for m in steps_m) * cfg.algo.group_size,
            "busy": busy_fractions(Path(output_dir)) if max_staleness else None,
            **{k: statistics.fmean(m[k] for m in steps_m[1:] or steps_m)
               for k in ("perf/generate_s", "perf/reward_s", "perf/learner_s")}}


def busy_fractions(output_dir: Path) -> dict[str, float]:
    """Fraction of the timeline (first to last span) each kind of work was busy."""
    spans = read_spans(output_dir)
    wall = max(e for _, _, e in spans) - min(s for _, s, _ in spans)
    return {kind: busy_seconds(spans, kind) / wall for kind in ("generate", "score", "learn", "push")}


def reward_at(curve: list[tuple[float, float]], fraction: float, window: int = 10) -> tuple[float, float]:
    """(wall-clock, mean reward of the `window` steps ending there) at a fraction of the run."""
    end = max(1, round(len(curve) * fraction))
    rewards = [r for _, r in curve[max(0, end - window):end]]
    return curve[end - 1][0], statistics.fmean(rewards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run under a minute: staleness 0 and 1, few steps (not the figures)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (default 60, quick 3)")
    parser.add_argument("--sft-steps", type=int, default=None, help="warm-up steps (default 40, quick 0)")
    parser.add_argument("--reward-delay-ms", type=float, default=6.0,
                        help="per-sample scoring delay; with the hybrid policy on the 2-core CI machine 6 ms makes "
                             "scoring cost a little more than generation + learner, 3 ms about two thirds of it")
    parser.add_argument("--scoring-calls", type=int, default=Config().rollout.scoring_calls_in_flight,
                        help="rollout.scoring_calls_in_flight of the async runs (1: one scoring call at a time)")
    parser.add_argument("--staleness", default=None, help="comma-separated levels (default 0,1,2; quick 0,1)")
    parser.add_argument("--policy", choices=list(POLICIES), default="hybrid",
                        help="hybrid: the default job's minimax_tiny on the built-in sampler; dense: qwen2_tiny on vLLM")
    args = parser.parse_args()
    steps = args.steps or (3 if args.quick else 60)
    sft_steps = args.sft_steps if args.sft_steps is not None else (0 if args.quick else 40)
    staleness_levels = [int(m) for m in (args.staleness or ("0,1" if args.quick else "0,1,2")).split(",")]
    if not {0, 1} <= set(staleness_levels):
        parser.error("--staleness must include 0 and 1: the last line is their ratio")

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"BENCH_REWARD_DELAY_S": str(args.reward_delay_ms / 1000)}})
    runs = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for m in staleness_levels:
                runs[m] = run(f"{tmp}/staleness{m}", steps, sft_steps, m, args.scoring_calls, args.policy)
    finally:
        ray.shutdown()

    print(f"\n{args.policy} policy, {steps} steps x {int(runs[0]['samples'] / steps)} samples, reward delay {args.reward_delay_ms:g} ms/sample"
          " over 2 workers; per-step seconds are means (async: they overlap)")
    print(f"{'staleness':>9} {'samples/s':>9} {'wall_s':>7} {'gen_s':>6} {'score_s':>7} {'learn_s':>7} "
          f"{'t@50%':>6} {'rew@50%':>7} {'t@100%':>6} {'rew@100%':>8} {'eval':>5}")
    for m, r in runs.items():
        t50, r50 = reward_at(r["curve"], 0.5)
        t100, r100 = reward_at(r["curve"], 1.0)
        print(f"{m:>9} {r['samples'] / r['wall']:>9.1f} {r['wall']:>7.1f} {r['perf/generate_s']:>6.2f} "
              f"{r['perf/reward_s']:>7.2f} {r['perf/learner_s']:>7.2f} {t50:>6.1f} {r50:>7.3f} {t100:>6.1f} "
              f"{r100:>8.3f} {r['result']['eval/greedy_reward']:>5.3f}")
    print(f"\nasync profile ({args.scoring_calls} scoring calls in flight): fraction of wall clock busy")
    print(f"{'staleness':>9} {'generate':>8} {'score':>6} {'learn':>6} {'push':>6}")
    for m, r in runs.items():
        if r["busy"]:
            b = r["busy"]
            print(f"{m:>9} {b['generate']:>8.2f} {b['score']:>6.2f} {b['learn']:>6.2f} {b['push']:>6.2f}")
    ratio = (runs[1]["samples"] / runs[1]["wall"]) / (runs[0]["samples"] / runs[0]["wall"])
    print(f"speedup_staleness1_vs_sync={ratio:.2f}")


if __name__ == "__main__":
    main()
