"""CISPO vs DAPO vs GRPO (and variants) on the built-in addition task: the same seeds and sample budget.

Every (variant, seed) pair runs the default job (conf/config.yaml: 40 SFT warm-up steps,
16 prompts x 8 samples per step, GRPO advantages, no dynamic sampling) on the dense
policy (qwen2_tiny on vLLM; `--model minimax_tiny` for the hybrid one)
for --steps RL steps, all in one Ray session. A variant is a loss name from the registry,
optionally with `+modifier`s (MODIFIERS), e.g. `cispo`, `grpo+tis` (GRPO with token-level
truncated IS against the sampler, which needs the recomputed pi_old), `cispo+replay` (MoE
routing replay, hybrid policy only); only those overrides differ between variants, and seed s
sets the policy's init, the sampling seed and the task stream. Reported per variant:
steps until the reward (mean over a --smooth-step window) first reaches --threshold,
the final reward (mean of the last --smooth steps), greedy eval accuracy, how often the
loss's clip acted, the correction's masked / truncated token fractions, the sampler/learner
token-probability correlation (learner/prob_corr), the MoE routing agreement
(moe/routing_agreement, logged where the sampler recorded its experts) and the run's wall time;
the per-step figures are means over the run's steps. A table is printed and written with the
curves to bench/results/; the PNG shows each variant's smoothed reward curve, mean +- std over seeds.

    .venv/bin/python bench/algo_compare.py [--steps N] [--seeds 0 1 2] [--max-staleness K]
                                           [--variants cispo dapo grpo grpo+tis cispo+replay] [--model M]
                                           [--override KEY=VALUE ...] [--report]

--losses is the old name of --variants (a plain loss name is a variant).

--report prints the table and draws the PNG from the stored runs without running any
(e.g. with another --threshold).

--max-staleness 1 (the default) trains with the asynchronous driver: samples are up to
one policy version old, so the IS ratios move away from 1 and the losses' clipping
can differ. With 0 (synchronous, one optimizer step per batch) every ratio is 1 up to
float noise and CISPO's gradient sg(r)·A·∇logπ equals DAPO's clipped surrogate's, so
those two runs differ only by noise. `--override learner.mini_batches=4` (M1's regime: K
optimizer updates per batch) makes every update after a step's first off-policy even
synchronously, so the losses' clipping can differ there too. Finished runs are kept in
bench/results/algo_compare_staleness{K}_steps{N}[_model][_overrides].json (with the table,
.md, and the curves, .png); a rerun with the same name skips them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import ray
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401 - registers the config schema
from cispo.config import Config, validate

RESULTS = Path(__file__).resolve().parent / "results"

# What each `+modifier` of a variant adds to its loss's overrides.
MODIFIERS = {
    # Token-level truncated IS, min(pi_old / pi_rollout, 2): the correction compares the learner's
    # recomputed pi_old with the sampler's, so it needs old_logp=recompute.
    "tis": ["algo.correction=tis_token", "algo.old_logp=recompute"],
    # The learner's MoE layers use the experts the built-in sampler routed each token to.
    "replay": ["algo.routing_replay=true"],
}


def variant_overrides(variant: str) -> list[str]:
    """`loss[+modifier...]` -> Hydra overrides, e.g. grpo+tis -> algo.loss=grpo plus MODIFIERS["tis"]."""
    loss, *mods = variant.split("+")
    unknown = [m for m in mods if m not in MODIFIERS]
    if unknown:
        raise SystemExit(f"variant {variant!r}: unknown modifier(s) {unknown}; known: {sorted(MODIFIERS)}")
    return [f"algo.loss={loss}", *(o for m in mods for o in MODIFIERS[m])]


def job_config(variant: str, seed: int, args: argparse.Namespace) -> Config:
    """`make train`'s composed config on `--model` (default the dense policy, which the README's
    study ran on) with this variant, seed and budget."""
    overrides = [f"model={args.model}", f"rollout={'builtin' if args.model == 'minimax_tiny' else 'vllm'}",
                 *variant_overrides(variant), f"trainer.steps={args.steps}", "trainer.save_every=0",
                 f"trainer.max_staleness={args.max_staleness}",
                 # Quoted: a study's name holds its overrides' '=' and a variant's '+'.
                 f"trainer.output_dir='{Path(args.output_root) / study_name(args) / f'{variant}_seed{seed}'}'",
                 f"model.init_seed={seed}", f"trainer.seed={seed}", f"task.seed={1234 + seed}",
                 "logger.mode=disabled", "logger.progress_bar=false", *args.override]
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        return validate(OmegaConf.to_object(compose("config", overrides=overrides)))


# Per-step metrics kept as run means (None where the run never logged them, e.g. no correction).
RUN_MEANS = {"clip_frac_high": "learner/clip_frac_high", "clip_frac_low": "learner/clip_frac_low",
             "masked_frac": "learner/correction_masked_frac", "truncated_frac": "learner/correction_truncated_frac",
             "prob_corr": "learner/prob_corr", "routing_agreement": "moe/routing_agreement"}


def run(variant: str, seed: int, args: argparse.Namespace) -> dict:
    cfg = job_config(variant, seed, args)
    if args.max_staleness == 0:
        from cispo.train import train as driver
    else:
        from cispo.train_async import train_async as driver
    start = time.monotonic()
    result = driver(cfg)
    wall_s = time.monotonic() - start
    lines = (Path(cfg.trainer.output_dir) / "metrics.jsonl").read_text().splitlines()
    steps = [m for m in map(json.loads, lines) if "reward/mean" in m]
    return {"variant": variant, "loss": cfg.algo.loss, "seed": seed, "rewards": [m["reward/mean"] for m in steps],
            **{key: run_mean(steps, metric) for key, metric in RUN_MEANS.items()},
            "samples": int(sum(m["rollout/groups"] for m in steps)) * cfg.algo.group_size,
            "eval_greedy_reward": result["eval/greedy_reward"], "wall_s": wall_s}


def run_mean(steps: list[dict], metric: str) -> float | None:
    """The metric's mean over the steps that logged a finite value; None if none did."""
    values = [m[metric] for m in steps if metric in m and math.isfinite(m[metric])]
    return statistics.fmean(values) if values else None


def variant_of(run: dict) -> str:
    return run.get("variant", run["loss"])  # runs stored before variants were named by their loss


def smoothed(rewards: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` steps."""
    return [statistics.fmean(rewards[max(0, i + 1 - window):i + 1]) for i in range(len(rewards))]


def steps_to(rewards: list[float], threshold: float, window: int) -> int | None:
    """The first step (1-based) whose trailing `window`-step mean reward is >= threshold; None if never."""
    return next((i + 1 for i, r in enumerate(smoothed(rewards, window)) if r >= threshold), None)


def mean_of(runs: list[dict], key: str, fmt: str) -> str:
    """The key's mean over the runs that have it, formatted; '–' where none has it."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return format(statistics.fmean(values), fmt) if values else "–"


def table(runs: list[dict], variants: list[str], args: argparse.Namespace) -> str:
    w = args.smooth
    rows = [f"| variant | steps to {args.threshold} per seed | mean | final reward (last {w}) | greedy eval | "
            f"clip high / low | correction masked / truncated | prob corr | routing agreement | "
            f"samples/run | wall time/run |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    means = {}
    for variant in variants:
        mine = [r for r in runs if variant_of(r) == variant]
        if not mine:
            continue
        reached = [steps_to(r["rewards"], args.threshold, w) for r in mine]
        finals = [statistics.fmean(r["rewards"][-w:]) for r in mine]
        # A seed that never reached the threshold counts as the whole budget: a lower bound.
        means[variant] = statistics.fmean(s if s is not None else len(r["rewards"]) for s, r in zip(reached, mine))
        bound = ">=" if None in reached else ""
        spread = statistics.pstdev(finals) if len(finals) > 1 else 0.0
        wall = mean_of(mine, "wall_s", ".0f")
        rows.append(f"| {variant} | {', '.join(str(s) if s else 'not reached' for s in reached)} | "
                    f"{bound}{means[variant]:.0f} | {statistics.fmean(finals):.3f} ± {spread:.3f} | "
                    f"{statistics.fmean(r['eval_greedy_reward'] for r in mine):.3f} | "
                    f"{mean_of(mine, 'clip_frac_high', '.4f')} / {mean_of(mine, 'clip_frac_low', '.4f')} | "
                    f"{mean_of(mine, 'masked_frac', '.4f')} / {mean_of(mine, 'truncated_frac', '.4f')} | "
                    f"{mean_of(mine, 'prob_corr', '.4f')} | {mean_of(mine, 'routing_agreement', '.4f')} | "
                    f"{mine[0]['samples']} | {wall if wall == '–' else wall + ' s'} |")
    if "cispo" in means and "dapo" in means:
        rows.append(f"\ncispo_steps_vs_dapo={means['cispo'] / means['dapo']:.2f} (goal <= 0.7; "
                    f"'>=' marks a mean that counts unreached seeds as the whole budget)")
    return "\n".join(rows)


def plot(runs: list[dict], variants: list[str], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in variants:
        curves = [smoothed(r["rewards"], args.smooth) for r in runs if variant_of(r) == variant]
        if not curves:
            continue
        n = min(map(len, curves))
        mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
        std = [statistics.pstdev(c[i] for c in curves) for i in range(n)]
        x = range(1, n + 1)
        ax.plot(x, mean, label=f"{variant} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.axhline(args.threshold, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("RL step")
    ax.set_ylabel(f"training reward ({args.smooth}-step mean), mean ± std over seeds")
    ax.set_title(f"addition on {args.model}, 16 prompts x 8 samples/step, max_staleness={args.max_staleness}"
                 + "".join(f"\n{o}" for o in args.override), fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", "--losses", nargs="+", default=["cispo", "dapo", "grpo"],
                        help=f"loss[+modifier...], modifiers: {', '.join(sorted(MODIFIERS))}")
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
    text = table(runs, args.variants, args)
    print(text)
    (RESULTS / f"{study_name(args)}.md").write_text(text + "\n")
    plot(runs, args.variants, args, RESULTS / f"{study_name(args)}.png")
    print(f"curves: {RESULTS / study_name(args)}.png")


def study_name(args: argparse.Namespace) -> str:
    """Runs are comparable (and stored together) only at the same budget, staleness and overrides."""
    model = [] if args.model == "qwen2_tiny" else [args.model]  # the stored study is the dense one's
    return "_".join([f"algo_compare_staleness{args.max_staleness}_steps{args.steps}", *model, *args.override])


def run_all(runs: list[dict], store: Path, args: argparse.Namespace) -> None:
    """Run every (seed, variant) not in `runs` yet, in one Ray session, storing each as it finishes."""
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    try:
        for seed in args.seeds:  # seed-major: a run cut short still leaves every variant with the same seeds
            for variant in args.variants:
                if any(variant_of(r) == variant and r["seed"] == seed for r in runs):
                    continue
                runs.append(run(variant, seed, args))
                store.write_text(json.dumps(runs))
                print(f"done: {variant} seed {seed}: final reward {statistics.fmean(runs[-1]['rewards'][-10:]):.3f}, "
                      f"{runs[-1]['wall_s']:.0f} s", flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
