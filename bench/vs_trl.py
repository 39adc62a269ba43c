"""This project against TRL's `GRPOTrainer(loss_type="cispo")`, side by side in one run: the same
policy checkpoint, task, batch and response cap, at 6 and at 64 response tokens.

Both sides start from one checkpoint per (policy, cap), made here: the project's random-init policy
(`cispo.policy.create_policy`, `model=qwen2_tiny`; `minimax_tiny` for the hybrid run) and the task's
tokenizer, then a supervised warm-up (40 steps of 64 reference pairs, as the job's own warm-up).
At 6 tokens the warm-up answer is the sum (`a+b=` -> `c<eos>`). At 64 tokens it is the sum padded
with `+` past the cap, so that sampled responses run to the cap on both sides; the reward then scores
the leading digits (`bench/trl_side.py:padded_addition_reward`, the same function on both sides).
Neither side forces a length (no min_tokens / ignore_eos: our config has no such key): both stop at
EOS or the cap, and the table shows each side's mean response length.

Sides (each 8 prompts x 8 samples per step, lr 2e-4, AdamW (0.9, 0.95) eps 1e-8, clip 1.0, temperature 1,
one update per step, no KL, CISPO with the IS weight clipped at 5, the prompts of the addition task's
stream in order):
  trl               TRL in its own venv (made on first use, see TRL_VENV), generation with transformers
  dense_vllm        our default synchronous driver, qwen2_tiny on vLLM (disaggregated)
  hybrid_builtin    our default synchronous driver, minimax_tiny on its built-in sampler (its own checkpoint:
                    a different model, listed for reference)
  dense_colocated   as dense_vllm with rollout.colocate=true (vLLM inside the learner rank)
  hybrid_colocated  as hybrid_builtin with rollout.colocate=true (the built-in sampler inside the learner rank)
  dense_builtin     as dense_vllm on the built-in sampler (`cispo.model.dense`) instead of vLLM
  dense_builtin_colocated  as dense_builtin with rollout.colocate=true
  dense_builtin_colocated_2ranks  as dense_builtin_colocated with learner.world_size=2: two ranks of one thread
                    each, each generating half the step's prompts in its own process (a decoding step of this
                    model runs no faster on two threads than on one, so one rank leaves a core idle)
  dense_builtin_colocated_zero0  as dense_builtin_colocated with learner.zero_stage=0 (one rank: nothing to partition)
  dense_builtin_async  as dense_builtin with trainer.max_staleness=1 (generation overlaps the learner step)
samples/s on every side: samples of the steps after --warmup-steps over those steps' wall time, loop
to loop (generation, scoring, update, weight push, logging; start-up, warm-up SFT and the final
evaluation excluded).
Reward at equal samples: the mean over all steps and over the last 5 steps, the same sample count on
every side. The ratios are ours / TRL for the same cap, in samples/s and in response tokens/s (the sides'
policies drift apart over the steps, so at 64 tokens their mean lengths differ). On a shared 2-core
machine the rates are noisy.

    .venv/bin/python bench/vs_trl.py [--steps 20] [--lengths 6,64] [--variants dense_vllm,hybrid_builtin,dense_colocated]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401  (registers the config schema)
from cispo.config import Config, validate
from cispo.envs.addition import AdditionTask
from cispo.policy import create_policy, load_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trl_side  # noqa: E402  (the task's pure functions, shared with TRL's side)

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
TRL_VENV = Path(os.environ.get("CISPO_BENCH_TRL_VENV", Path.home() / ".cache/cispo/bench-trl-venv"))
# torch==2.13.0 is the CPU build on this machine's disk (a bare `torch` would fetch a multi-GB CUDA build);
# the rest are the versions this benchmark was written against.
CHECKPOINTS = TRL_VENV.parent / "vs_trl_checkpoints"
TRL_PINS = [["torch==2.13.0"], ["trl==1.16.0", "transformers==5.24.0", "datasets==5.2.0", "accelerate==1.15.0"]]

# Our variants: Hydra overrides on top of the shared settings; `policy` names the checkpoint they start from.
VARIANTS = {
    "dense_vllm": {"policy": "qwen2_tiny", "overrides": ["model=qwen2_tiny", "rollout=vllm"]},
    "hybrid_builtin": {"policy": "minimax_tiny", "overrides": []},
    "dense_colocated": {"policy": "qwen2_tiny", "overrides": ["model=qwen2_tiny", "rollout=vllm", "rollout.colocate=true"]},
    "hybrid_colocated": {"policy": "minimax_tiny", "overrides": ["rollout.colocate=true"]},
    "dense_builtin": {"policy": "qwen2_tiny", "overrides": ["model=qwen2_tiny", "rollout=builtin"]},
    "dense_builtin_colocated": {"policy": "qwen2_tiny",
                                "overrides": ["model=qwen2_tiny", "rollout=builtin", "rollout.colocate=true"]},
    "dense_builtin_colocated_2ranks": {"policy": "qwen2_tiny",
                                       "overrides": ["model=qwen2_tiny", "rollout=builtin", "rollout.colocate=true",
                                                     "learner.world_size=2"]},
    "dense_builtin_colocated_zero0": {"policy": "qwen2_tiny",
                                      "overrides": ["model=qwen2_tiny", "rollout=builtin", "rollout.colocate=true",
                                                    "learner.zero_stage=0"]},
    "dense_builtin_async": {"policy": "qwen2_tiny",
                            "overrides": ["model=qwen2_tiny", "rollout=builtin", "trainer.max_staleness=1"]},
}
PROMPTS_PER_STEP, GROUP_SIZE, LR = 8, 8, 2e-4
SFT_STEPS, SFT_BATCH, SFT_LR = 40, 64, 1e-3
TASK_SEED = 1234


def ensure_trl_venv() -> Path:
    """The TRL venv's python, made when missing (python3.11 -m venv, then pip install TRL_PINS)."""
    python = TRL_VENV / "bin/python"
    if python.exists() and subprocess.run([str(python), "-c", "import trl"], capture_output=True).returncode == 0:
        return python
    print(f"making the TRL venv at {TRL_VENV} (a few minutes)", flush=True)
    subprocess.run(["python3.11", "-m", "venv", str(TRL_VENV)], check=True)
    for pins in TRL_PINS:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    return python


def compose_config(overrides: list[str]) -> Config:
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=overrides))


def make_checkpoint(policy: str, length: int) -> Path:
    """The project's random-init `policy` (model=<policy>), warmed up on the task's reference answers
    (as `trl_side.warm_up_target` pads them for `length`), saved as an HF directory with its tokenizer.
    Kept under CHECKPOINTS, named by everything that makes it (the warm-up is minutes on 2 shared cores)."""
    cfg = compose_config([f"model={policy}"])
    recipe = json.dumps([dataclasses.asdict(cfg.model), SFT_STEPS, SFT_BATCH, SFT_LR, TASK_SEED,
                         trl_side.warm_up_target("10", length), torch.__version__], sort_keys=True)
    directory = CHECKPOINTS / f"{policy}_{length}_{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if (directory / "config.json").exists():
        return directory
    tokenizer = AdditionTask.build_tokenizer()
    create_policy(cfg.model, tokenizer, directory.with_name(directory.name + ".init"))
    model = load_policy(directory.with_name(directory.name + ".init")).train()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=SFT_LR, betas=(0.9, 0.95), eps=1e-8)
    pairs = (trl_side.reference_pair(TASK_SEED, i) for i in range(SFT_STEPS * SFT_BATCH))
    for _ in range(SFT_STEPS):
        seqs, starts = [], []
        for _, (prompt, answer) in zip(range(SFT_BATCH), pairs):
            ids = tokenizer(prompt).input_ids
            target = tokenizer(trl_side.warm_up_target(answer, length), add_special_tokens=False).input_ids
            seqs.append(ids + target + [tokenizer.eos_token_id])
            starts.append(len(ids))
        width = max(map(len, seqs))
        input_ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in seqs])  # (B, T), right-padded
        labels = torch.full_like(input_ids, -100)
        for i, (s, start) in enumerate(zip(seqs, starts)):
            labels[i, start:len(s)] = input_ids[i, start:len(s)]  # loss on the answer and EOS only
        logits = model(input_ids).logits[:, :-1].float()  # (B, T-1, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    partial = directory.with_name(directory.name + ".partial")
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    partial.rename(directory)
    shutil.rmtree(directory.with_name(directory.name + ".init"))
    print(f"checkpoint {policy} for {length} tokens: warm-up loss {loss.item():.3f} -> {directory}", flush=True)
    return directory


def check_same_prompts() -> None:
    """TRL's side writes the task's prompt stream again: it must be ours."""
    task = AdditionTask(1, 1, TASK_SEED, 0)
    for i in range(200):
        row = task.row(i)
        assert (row.prompt, row.metadata["answer"]) == trl_side.addition_row(TASK_SEED, i), f"prompt {i} differs"
        assert task.reference_pair(i) == trl_side.reference_pair(TASK_SEED, i), f"reference pair {i} differs"


def run_trl(python: Path, checkpoint: Path, length: int, steps: int, warmup: int, work: Path) -> dict:
    out = work / f"trl_{length}.json"
    cmd = [str(python), str(BENCH / "trl_side.py"), "--model", str(checkpoint), "--length", str(length),
           "--steps", str(steps), "--warmup-steps", str(warmup), "--prompts-per-step", str(PROMPTS_PER_STEP),
           "--group-size", str(GROUP_SIZE), "--lr", str(LR), "--task-seed", str(TASK_SEED),
           "--workdir", str(work / f"trl_{length}"), "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if run.returncode != 0:
        raise RuntimeError(f"TRL side failed ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    result = json.loads(out.read_text())
    return {"samples_per_s": result["samples_per_s"], "rewards": result["reward_per_step"],
            "response_len_mean": result["response_len_mean"], "versions": result["versions"]}


def run_ours(variant: str, checkpoint: Path, length: int, steps: int, warmup: int, work: Path) -> dict:
    from cispo.train import train

    out = work / f"{variant}_{length}"
    reward = f"{BENCH / 'trl_side.py'}:{trl_side.reward_for(length).__name__}"
    cfg = validate(compose_config([
        *VARIANTS[variant]["overrides"], f"model.path={checkpoint}", "trainer.sft_steps=0", f"trainer.steps={steps}",
        "trainer.save_every=0", f"trainer.output_dir={out}", "logger.mode=disabled", "logger.progress_bar=false",
        f"rollout.prompts_per_step={PROMPTS_PER_STEP}", f"algo.group_size={GROUP_SIZE}", f"learner.lr={LR}",
        "learner.eps=1e-8", f"rollout.max_new_tokens={length}", "rollout.temperature=1.0", f"reward.fn={reward}",
        f"task.seed={TASK_SEED}", "task.min_digits=1", "task.max_digits=1", "task.eval_size=8"]))
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "perf/step_s" in r]
    # Loop to loop, as TRL's side measures between step ends: from the end of step `warmup` to the last.
    seconds = rows[-1]["perf/wall_s"] - rows[warmup - 1]["perf/wall_s"]
    return {"samples_per_s": PROMPTS_PER_STEP * GROUP_SIZE * (len(rows) - warmup) / seconds,
            "rewards": [r["reward/mean"] for r in rows],
            "response_len_mean": statistics.fmean(r["rollout/response_len_mean"] for r in rows)}


def summary(run: dict) -> dict:
    r = run["rewards"]
    return {**run, "reward_mean": statistics.fmean(r), "reward_last5": statistics.fmean(r[-5:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="RL steps per run (every side)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of samples/s")
    parser.add_argument("--lengths", default="6,64", help="response caps, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"ours, from {', '.join(VARIANTS)}")
    args = parser.parse_args()
    if not 1 <= args.warmup_steps < args.steps:
        parser.error("--warmup-steps must be at least 1 (the timed loop starts at the end of a step) and below --steps")
    lengths = [int(x) for x in args.lengths.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    check_same_prompts()
    python = ensure_trl_venv()

    runs: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="vs_trl_") as tmp:
        work = Path(tmp)
        for length in lengths:
            runs[length] = {}
            checkpoints = {policy: make_checkpoint(policy, length)
                           for policy in {"qwen2_tiny"} | {VARIANTS[v]["policy"] for v in variants}}
            started = time.perf_counter()
            runs[length]["trl"] = summary(run_trl(python, checkpoints["qwen2_tiny"], length, args.steps,
                                                  args.warmup_steps, work))
            print(f"trl {length} tokens: {runs[length]['trl']['samples_per_s']:.1f} samples/s "
                  f"({time.perf_counter() - started:.0f} s with start-up)", flush=True)
            for variant in variants:
                try:
                    runs[length][variant] = summary(run_ours(variant, checkpoints[VARIANTS[variant]["policy"]],
                                                             length, args.steps, args.warmup_steps, work))
                except Exception as e:  # noqa: BLE001 - one failing variant still leaves the others' figures
                    runs[length][variant] = {"error": f"{type(e).__name__}: {e}"}
                    print(f"{variant} {length} tokens failed: {e}", flush=True)
        import ray

        if ray.is_initialized():
            ray.shutdown()

    samples = args.steps * PROMPTS_PER_STEP * GROUP_SIZE
    print(f"\n{args.steps} steps x {PROMPTS_PER_STEP * GROUP_SIZE} samples on every side ({samples} samples); "
          f"samples/s over steps {args.warmup_steps + 1}..{args.steps} (steps' wall time; start-up, warm-up SFT and "
          f"final eval excluded); noisy on a shared 2-core machine")
    print(f"{'tokens':>6} {'side':<24} {'samples/s':>9} {'vs trl':>7} {'resp_len':>8} {'tokens/s':>8} {'vs trl':>7} "
          f"{'reward':>7} {'rew@last5':>9}")
    table = []
    for length, sides in runs.items():
        trl_rate = sides["trl"]["samples_per_s"]
        trl_tokens = trl_rate * sides["trl"]["response_len_mean"]
        for side, r in sides.items():
            if "error" in r:
                print(f"{length:>6} {side:<24} failed: {r['error'][:80]}")
                table.append({"tokens": length, "side": side, "error": r["error"]})
                continue
            # Sides may sample different lengths from the same cap (their policies drift apart over the
            # steps): response tokens per second is the rate at equal work.
            ratio, tokens = r["samples_per_s"] / trl_rate, r["samples_per_s"] * r["response_len_mean"]
            print(f"{length:>6} {side:<24} {r['samples_per_s']:>9.1f} {ratio:>6.2f}x {r['response_len_mean']:>8.1f} "
                  f"{tokens:>8.0f} {tokens / trl_tokens:>6.2f}x {r['reward_mean']:>7.3f} {r['reward_last5']:>9.3f}")
            table.append({"tokens": length, "side": side, "samples_per_s": round(r["samples_per_s"], 2),
                          "ratio_vs_trl": round(ratio, 3), "response_len_mean": round(r["response_len_mean"], 2),
                          "response_tokens_per_s": round(tokens, 1), "token_ratio_vs_trl": round(tokens / trl_tokens, 3),
                          "reward_mean": round(r["reward_mean"], 4), "reward_last5": round(r["reward_last5"], 4)})
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "vs_trl.json"
    # One entry per response cap, each measured side by side in one run: a run replaces only its own caps.
    by_length = json.loads(path.read_text())["by_length"] if path.exists() else {}
    for length, sides in runs.items():
        by_length[str(length)] = {
            "settings": {"steps": args.steps, "warmup_steps": args.warmup_steps, "prompts_per_step": PROMPTS_PER_STEP,
                         "group_size": GROUP_SIZE, "lr": LR, "sft_steps": SFT_STEPS, "cpus": os.cpu_count(),
                         "date": time.strftime("%Y-%m-%d"), "trl_versions": sides["trl"].get("versions")},
            "table": [row for row in table if row["tokens"] == length],
            "rewards_per_step": {side: r.get("rewards") for side, r in sides.items()}}
    path.write_text(json.dumps({"by_length": dict(sorted(by_length.items(), key=lambda kv: int(kv[0])))}, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
