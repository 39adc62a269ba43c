"""Where a training step's time goes, disaggregated and colocated, measured side by side in one run.

Runs the default job (`make train`'s config, plus any Hydra overrides) for a few steps in each
layout: engine actors of their own (`rollout.colocate=false`) and engines inside the learner
ranks (`rollout.colocate=true`), alternating `--rounds` times so both see the same load. For each
it prints the mean seconds per step of generation, reward, learner and weight push; "other", the
step's time in none of the four (Ray calls, serialisation, tokenising, thread hand-offs); and
"bookkeeping", the time between steps (metrics, the record of trained samples, W&B, the
progress bar). samples/s is loop to loop (`perf/wall_s`), so it includes both. The ratio is
colocated over disaggregated.

    .venv/bin/python bench/step_profile.py [--steps 60] [--rounds 2] [hydra overrides ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401  (registers the config schema)
from cispo.config import validate
from cispo.train import train

PHASES = {"generation": "perf/generate_s", "reward": "perf/reward_s", "learner": "perf/learner_s",
          "weight push": "perf/push_s"}
LAYOUTS = {"disaggregated": "rollout.colocate=false", "colocated": "rollout.colocate=true"}
SKIPPED_STEPS = 2  # the first steps pay one-off costs (allocations, caches)


def profile(steps: int, overrides: list[str]) -> dict[str, float]:
    """Mean seconds per step of each phase, of "other" and of "bookkeeping"; samples/s loop to loop."""
    out = Path(tempfile.mkdtemp(prefix="step_profile_"))
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        cfg = validate(OmegaConf.to_object(compose("config", overrides=[
            f"trainer.steps={steps}", "trainer.save_every=0", "trainer.sft_steps=5", "trainer.eval_every=0",
            f"trainer.output_dir={out}", "logger.progress_bar=false", "logger.mode=offline", *overrides])))
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "perf/step_s" in r][SKIPPED_STEPS - 1:]
    timed = rows[1:]  # each timed step's loop starts where the step before it was logged
    result = {name: statistics.fmean(r[key] for r in timed) for name, key in PHASES.items()}
    step_s = statistics.fmean(r["perf/step_s"] for r in timed)
    loop_s = (rows[-1]["perf/wall_s"] - rows[0]["perf/wall_s"]) / len(timed)
    result["other"] = step_s - sum(result[name] for name in PHASES)
    result["bookkeeping"] = loop_s - step_s
    result["loop"] = loop_s
    result["samples_per_s"] = cfg.rollout.prompts_per_step * cfg.algo.group_size / loop_s
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each layout, alternating")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=qwen2_tiny rollout=vllm")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
    for _ in range(args.rounds):
        for layout, override in LAYOUTS.items():
            runs[layout].append(profile(args.steps, [*args.overrides, override]))
    means = {layout: {k: statistics.fmean(r[k] for r in rs) for k in rs[0]} for layout, rs in runs.items()}
    print(f"\nseconds per step, mean of {args.rounds} runs x {args.steps - SKIPPED_STEPS} steps per layout "
          f"({' '.join(args.overrides) or 'the default job'})")
    print(f"{'':<14}" + "".join(f"{layout:>15}" for layout in LAYOUTS))
    for key in [*PHASES, "other", "bookkeeping", "loop", "samples_per_s"]:
        print(f"{key:<14}" + "".join(f"{means[layout][key]:>15.4f}" for layout in LAYOUTS))
    ratio = means["colocated"]["samples_per_s"] / means["disaggregated"]["samples_per_s"]
    print(f"colocated / disaggregated samples/s: {ratio:.2f}x "
          f"(per run: {[round(r['samples_per_s'], 1) for layout in LAYOUTS for r in runs[layout]]})")


if __name__ == "__main__":
    main()
