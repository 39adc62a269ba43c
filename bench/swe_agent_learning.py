"""Does RL add to SFT on agent episodes? Held-out resolve rate after the warm-up alone and after RL.

Runs `cispo-train +experiment=swe_agent` once per seed, one after another (the seed sets the
policy's random init and the sampler's seed; the tasks are the same for every seed), each
into its own output directory, and reads each run's metrics.jsonl: the
step-0 evaluation is the policy after SFT alone, the last one the policy after RL. Both are
greedy episodes on the same held-out tasks (other file names, other expressions), graded by
their tests in Docker sandboxes. Goal (issue 15): RL adds at least 0.2 within 30 minutes of RL.

    .venv/bin/python bench/swe_agent_learning.py [--seeds 0,1,2] [--out outputs/swe_agent_learning] [OVERRIDES...]

Extra arguments are Hydra overrides passed to every run (e.g. trainer.steps=6 for a short check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESOLVED = "eval/greedy_reward"  # an episode's reward is 1 when the task's tests pass, else 0


def run(seed: int, out: Path, overrides: list[str]) -> tuple[dict[int, float], float]:
    """One seed's run: its held-out resolve rate at each evaluation ({step: rate}; step 0 is after
    SFT alone, the last after RL), and its wall seconds."""
    started = time.perf_counter()
    job = subprocess.run([sys.executable, "-m", "cispo.cli", "+experiment=swe_agent", f"trainer.seed={seed}",
                          f"model.init_seed={seed}", f"trainer.output_dir={out}", "logger.progress_bar=false",
                          *overrides])
    if job.returncode:  # the job has said why above
        raise SystemExit(f"seed {seed}: the job failed (exit status {job.returncode}); its log: {out}/cli.log")
    seconds = time.perf_counter() - started
    evals = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if RESOLVED in m]
    if len(evals) < 2 or evals[0]["step"] != 0:
        raise RuntimeError(f"{out}/metrics.jsonl: expected an evaluation at step 0 and one at the end, got "
                           f"steps {[m['step'] for m in evals]}")
    return {m["step"]: m[RESOLVED] for m in evals}, seconds


def seed_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas (0,1,2), got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2],
                        help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--out", type=Path, default=Path("outputs/swe_agent_learning"))
    args, overrides = parser.parse_known_args()
    rows = []
    for seed in args.seeds:
        rates, seconds = run(seed, args.out / f"seed{seed}", overrides)
        sft, rl = rates[0], rates[max(rates)]
        rows.append((seed, sft, rl, seconds))
        steps = ", ".join(f"step {step} {rate:.3f}" for step, rate in rates.items())
        print(f"seed {seed}: resolve rate after SFT {sft:.3f}, after RL {rl:.3f} ({rl - sft:+.3f}; {steps}), "
              f"{seconds / 60:.1f} min", flush=True)
    gain = statistics.fmean(rl - sft for _, sft, rl, _ in rows)
    print(f"\n| seed | after SFT | after RL | RL adds | minutes |\n|---|---|---|---|---|")
    for seed, sft, rl, seconds in rows:
        print(f"| {seed} | {sft:.3f} | {rl:.3f} | {rl - sft:+.3f} | {seconds / 60:.1f} |")
    print(f"\nmean: after SFT {statistics.fmean(r[1] for r in rows):.3f}, after RL "
          f"{statistics.fmean(r[2] for r in rows):.3f}, RL adds {gain:+.3f} (goal: +0.2)")


if __name__ == "__main__":
    main()
