"""Where a training step's time goes: generation, reward, learner, weight push.

Runs the default job (`make train`'s config) for a few steps and prints each phase's
share of the step time, measured in the same run, and samples/s.

    .venv/bin/python bench/step_profile.py [--steps 20] [hydra overrides ...]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. rollout.prompts_per_step=32")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="step_profile_"))
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        cfg = validate(OmegaConf.to_object(compose("config", overrides=[
            f"trainer.steps={args.steps}", "trainer.save_every=0", "trainer.sft_steps=5",
            f"trainer.output_dir={out}", "logger.progress_bar=false", "logger.mode=disabled", *args.overrides])))
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_s" in r][1:]  # the first step pays one-off warm-up costs
    step_s = statistics.fmean(r["perf/step_s"] for r in steps)
    print(f"\nstep profile over {len(steps)} steps ({cfg.rollout.prompts_per_step} prompts x "
          f"{cfg.algo.group_size} samples, engine={cfg.rollout.engine}, learner ranks={cfg.learner.world_size})")
    print(f"{'phase':<12} {'mean s':>8} {'share':>7}")
    accounted = 0.0
    for name, key in PHASES.items():
        mean = statistics.fmean(r[key] for r in steps)
        accounted += mean
        print(f"{name:<12} {mean:>8.3f} {mean / step_s:>7.1%}")
    print(f"{'other':<12} {step_s - accounted:>8.3f} {(step_s - accounted) / step_s:>7.1%}")
    print(f"samples_per_s={statistics.fmean(r['perf/samples_per_s'] for r in steps):.1f}")


if __name__ == "__main__":
    main()
