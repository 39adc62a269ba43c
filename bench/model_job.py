"""The default (hybrid) job against the dense one: samples/s of the default config (the
lightning MoE with its own sampler) vs `model=qwen2_tiny rollout=vllm` (dense Qwen2 on vLLM).

Runs `bench/step_profile.py` for each, alternating, with the same steps and task, and
prints both rates and their ratio (best step-profile mean of each over `--rounds`).

    .venv/bin/python bench/model_job.py [--steps 10] [--rounds 1]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

JOBS = {"dense (qwen2_tiny, vllm)": ["model=qwen2_tiny", "rollout=vllm"], "hybrid (minimax_tiny, builtin)": []}


def samples_per_s(steps: int, overrides: list[str]) -> float:
    script = Path(__file__).with_name("step_profile.py")
    run = subprocess.run([sys.executable, str(script), "--steps", str(steps), *overrides],
                         capture_output=True, text=True)
    found = re.findall(r"^samples_per_s=([0-9.]+)$", run.stdout, flags=re.MULTILINE)  # the profile's own line
    if run.returncode != 0 or not found:
        raise RuntimeError(f"step_profile {overrides} failed ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    print(run.stdout[run.stdout.index("step profile"):].rstrip(), flush=True)
    return float(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    best = {name: 0.0 for name in JOBS}
    for _ in range(args.rounds):
        for name, overrides in JOBS.items():
            best[name] = max(best[name], samples_per_s(args.steps, overrides))
    (dense, rate_d), (hybrid, rate_h) = best.items()
    print(f"\n{dense:<32} {rate_d:8.1f} samples/s")
    print(f"{hybrid:<32} {rate_h:8.1f} samples/s   hybrid/dense = {rate_h / rate_d:.2f}x")


if __name__ == "__main__":
    main()
