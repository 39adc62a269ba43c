"""CISPO vs DAPO vs GRPO on the built-in addition task: the same seeds and sample budget.

Every (loss, seed) pair runs the default job (conf/config.yaml: 40 SFT warm-up steps,
16 prompts x 8 samples per step, GRPO advantages, no dynamic sampling) on the dense
policy (qwen2_tiny on vLLM; `--model minimax_tiny` for the hybrid one)
for --steps RL steps, all in one Ray session; only `algo.loss` differs between losses, and seed s
sets the policy's init, the sampling seed and the task stream. Reported per loss:
steps until the reward (mean over a --smooth-step window) first reaches --threshold,
the final reward (mean of the last --smooth steps), and how often each loss's clip
acted. A table is printed and written with the curves to bench/results/; the PNG
shows each loss's smoothed reward curve, mean +- std over seeds.

    .venv/bin/python bench/algo_compare.py [--steps N] [--seeds 0 1 2] [--max-staleness K]
                                           [--losses cispo dapo grpo] [--model M] [--override KEY=VALUE ...] [--report]

--report prints the table and draws the PNG from the stored runs without running any
(e.g. with another --threshold).

--max-staleness 1 (the default) trains with the asynchronous driver: samples are up to
one policy version old, so the IS ratios move away from 1 and the losses' clipping
can differ. With 0 (synchronous, one optimizer step per batch) every ratio is 1 up to
float noise and CISPO's gradient sg(r)·A·∇logπ equals DAPO's clipped surrogate's, so
those two runs differ only by noise. Finished runs are kept in
bench/results/algo_compare_staleness{K}_steps{N}.json (with the table, .md, and the
curves, .png); a rerun with the same --steps and --max-staleness skips them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import ray
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401 - registers the config schema
from cispo.config import Config, validate

RESULTS = Path(__file__).resolve().parent / "results"


def job_config(loss: str, seed: int, args: argparse.Namespace) -> Config:
    """`make train`'s composed config on `--model` (default the dense policy, which the README's
    study ran on) with this loss, seed and budget."""
    overrides = [f"model={args.model}", f"rollout={'builtin' if args.model == 'minimax_tiny' else 'vllm'}",
                 f"algo.loss={loss}", f"trainer.steps={args.steps}", "trainer.save_every=0",
                 f"trainer.max_staleness={args.max_staleness}",
                 f"trainer.output_dir={Path(args.output_root) / study_name(args) / f'{loss}_seed{seed}'}",
                 f"model.init_seed={seed}", f"trainer.seed={seed}", f"task.seed={1234 + seed}",
                 "logger.mode=disabled", "logger.progress_bar=false", *args.override]
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        return validate(OmegaConf.to_object(compose("config", overrides=overrides)))


def run(loss: str, seed: int, args: argparse.Namespace) -> dict:
    cfg = job_config(loss, seed, args)
    if args.max_staleness == 0:
        from cispo.train import train as driver
    else:
        from cispo.train_async import train_async as driver
    result = driver(cfg)
    lines = (Path(cfg.trainer.output_dir) / "metrics.jsonl").read_text().splitlines()
    steps = [m for m in map(json.loads, lines) if "reward/mean" in m]
    return {"loss": loss, "seed": seed, "rewards": [m["reward/mean"] for m in steps],
            "clip_frac_high": statistics.fmean(m["learner/clip_frac_high"] for m in steps),
            "clip_frac_low": statistics.fmean(m["learner/clip_frac_low"] for m in steps),
            "samples": int(sum(m["rollout/groups"] for m in steps)) * cfg.algo.group_size,
            "eval_greedy_reward": result["eval/greedy_reward"]}


def smoothed(rewards: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` steps."""
    return [statistics.fmean(rewards[max(0, i + 1 - window):i + 1]) for i in range(len(rewards))]


def steps_to(rewards: list[float], threshold: float, window: int) -> int | None:
    """The first step (1-based) whose trailing `window`-step mean reward is >= threshold; None if never."""
    return next((i + 1 for i, r in enumerate(smoothed(rewards, window)) if r >= threshold), None)


def table(runs: list[dict], losses: list[str], args: argparse.Namespace) -> str:
    w = args.smooth
    rows = [f"| loss | steps to {args.threshold} per seed | mean | final reward (last {w}) | "
            f"greedy eval | clip high / low | samples/run |", "|---|---|---|---|---|---|---|"]
    means = {}
    for loss in losses:
        mine = [r for r in runs if r["loss"] == loss]
        if not mine:
            continue
        reached = [steps_to(r["rewards"], args.threshold, w) for r in mine]
        finals = [statistics.fmean(r["rewards"][-w:]) for r in mine]
        # A seed that never reached the threshold counts as the whole budget: a lower bound.
        means[loss] = statistics.fmean(s if s is not None else len(r["rewards"]) for s, r in zip(reached, mine))
        bound = ">=" if None in reached else ""
        spread = statistics.pstdev(finals) if len(finals) > 1 else 0.0
        rows.append(f"| {loss} | {', '.join(str(s) if s else 'not reached' for s in reached)} | "
                    f"{bound}{means[loss]:.0f} | {statistics.fmean(finals):.3f} ± {spread:.3f} | "
                    f"{statistics.fmean(r['eval_greedy_reward'] for r in mine):.3f} | "
                    f"{statistics.fmean(r['clip_frac_high'] for r in mine):.4f} / "
                    f"{statistics.fmean(r['clip_frac_low'] for r in mine):.4f} | {mine[0]['samples']} |")
    if "cispo" in means and "dapo" in means:
        rows.append(f"\ncispo_steps_vs_dapo={means['cispo'] / means['dapo']:.2f} (goal <= 0.7; "
                    f"'>=' marks a mean that counts unreached seeds as the whole budget)")
    return "\n".join(rows)


def plot(runs: list[dict], losses: list[str], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for loss in losses:
        curves = [smoothed(r["rewards"], args.smooth) for r in runs if r["loss"] == loss]
        if not curves:
            continue
        n = min(map(len, curves))
        mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
        std = [statistics.pstdev(c[i] for c in curves) for i in range(n)]
        x = range(1, n + 1)
        ax.plot(x, mean, label=f"{loss} ({len(curves)} seeds)")
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.axhline(args.threshold, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("RL step")
    ax.set_ylabel(f"training reward ({args.smooth}-step mean), mean ± std over seeds")
    ax.set_title(f"addition, 16 prompts x 8 samples/step, max_staleness={args.max_staleness}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--losses", nargs="+", default=["cispo", "dapo", "grpo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max-staleness", type=int, default=1)
    parser.add_argument("--model", choices=["qwen2_tiny", "minimax_tiny"], default="qwen2_tiny",
                        help="the policy (minimax_tiny samples with the built-in sampler, qwen2_tiny with vLLM)")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--smooth", type=int, default=10)
    parser.add_argument("--output-root", default="outputs/algo_compare")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for every run, e.g. algo.eps_high_is=0.28 (a study of its own)")
    parser.add_argument("--report", action="store_true", help="only report the stored runs")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    store = RESULTS / f"{study_name(args)}.json"
    runs = json.loads(store.read_text()) if store.exists() else []
    if not args.report:
        run_all(runs, store, args)
    text = table(runs, args.losses, args)
    print(text)
    (RESULTS / f"{study_name(args)}.md").write_text(text + "\n")
    plot(runs, args.losses, args, RESULTS / f"{study_name(args)}.png")
    print(f"curves: {RESULTS / study_name(args)}.png")


def study_name(args: argparse.Namespace) -> str:
    """Runs are comparable (and stored together) only at the same budget, staleness and overrides."""
    model = [] if args.model == "qwen2_tiny" else [args.model]  # the stored study is the dense one's
    return "_".join([f"algo_compare_staleness{args.max_staleness}_steps{args.steps}", *model, *args.override])


def run_all(runs: list[dict], store: Path, args: argparse.Namespace) -> None:
    """Run every (seed, loss) not in `runs` yet, in one Ray session, storing each as it finishes."""
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    try:
        for seed in args.seeds:  # seed-major: a run cut short still leaves every loss with the same seeds
            for loss in args.losses:
                if any(r["loss"] == loss and r["seed"] == seed for r in runs):
                    continue
                runs.append(run(loss, seed, args))
                store.write_text(json.dumps(runs))
                print(f"done: {loss} seed {seed}: final reward {statistics.fmean(runs[-1]['rewards'][-10:]):.3f}",
                      flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
