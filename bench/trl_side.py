"""TRL's side of `bench/vs_trl.py`: `GRPOTrainer(loss_type="cispo")` on the addition task.

Run by the TRL venv's python (`bench/vs_trl.py` makes that venv and calls this file); it
imports nothing of cispo. The task's few pure lines (prompt i of the stream, the reference
answers of the warm-up, the rewards) are written again here, because cispo's own module
(`cispo.envs.addition`) pulls in the package's registry; `bench/vs_trl.py` checks that both
give the same prompts. The rewards here are also our job's reward plug-ins at 64 tokens
(`reward.fn=bench/trl_side.py:padded_addition_reward`): this file's top level imports the
standard library only.

    <trl venv>/bin/python bench/trl_side.py --model DIR --length 6 --steps 20 --out result.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time

# As cispo.envs.addition: training prompts come from `seed`, warm-up pairs from seed + 2 * this.
EVAL_SEED_OFFSET = 1_000_003
# The 64-token case pads every warm-up answer with this character (not a digit, in the task's vocabulary).
FILLER = "+"


def addition_row(seed: int, index: int, min_digits: int = 1, max_digits: int = 1) -> tuple[str, str]:
    """(prompt, answer) number `index` of the stream `seed`: cispo.envs.addition.AdditionTask._row."""
    rng = random.Random(seed * 1_000_000_007 + index)

    def operand() -> int:
        digits = rng.randint(min_digits, max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    a, b = operand(), operand()
    return f"{a}+{b}=", str(a + b)


def reference_pair(seed: int, index: int) -> tuple[str, str]:
    """Warm-up pair `index`, from the stream disjoint from training and eval (AdditionTask.reference_pair)."""
    return addition_row(seed + 2 * EVAL_SEED_OFFSET, index)


def warm_up_target(answer: str, length: int) -> str:
    """What the warm-up teaches the policy to answer when responses are capped at `length` tokens: the
    sum alone for short caps, else the sum padded past the cap, so that sampled responses run to it."""
    return answer if length <= 8 else answer + FILLER * (length + 8 - len(answer))


def addition_reward(prompt: str, response: str, metadata: dict) -> dict:
    """1.0 when the response is exactly the sum (cispo.reward.builtin:addition_reward)."""
    correct = response.strip() == metadata["answer"]
    return {"score": float(correct), "pass": correct}


def padded_addition_reward(prompt: str, response: str, metadata: dict) -> dict:
    """1.0 when the response's leading digits are the sum; what follows them (the padding) is not scored."""
    correct = re.match(r"\d*", response.strip()).group() == metadata["answer"]
    return {"score": float(correct), "pass": correct}


def reward_for(length: int):
    return addition_reward if length <= 8 else padded_addition_reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="HF checkpoint directory (tokenizer beside it)")
    parser.add_argument("--length", type=int, required=True, help="max_completion_length")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of samples/s")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--adam-eps", type=float, default=1e-8)
    parser.add_argument("--eps-high-is", type=float, default=4.0, help="our CISPO clip: r_hat <= 1 + this")
    parser.add_argument("--task-seed", type=int, default=1234)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True, help="result JSON")
    args = parser.parse_args()

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [addition_row(args.task_seed, i) for i in range(args.steps * args.prompts_per_step)]
    dataset = Dataset.from_list([{"prompt": p, "answer": a} for p, a in rows])
    score = reward_for(args.length)

    def reward(prompts, completions, answer, **_) -> list[float]:
        return [score(p, c, {"answer": a})["score"] for p, c, a in zip(prompts, completions, answer)]

    class StepClock(TrainerCallback):
        """Wall time of each optimizer step (generation, reward, update, the loop's own work):
        from the previous step's end, the first from its own begin."""

        def __init__(self):
            self.begin, self.ends = None, []

        def on_step_begin(self, *_, **__):
            if self.begin is None:
                self.begin = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.ends.append(time.perf_counter())

    clock = StepClock()
    config = GRPOConfig(
        output_dir=args.workdir, loss_type="cispo", epsilon_high=1.0 + args.eps_high_is, beta=0.0,
        num_generations=args.group_size, per_device_train_batch_size=args.prompts_per_step * args.group_size,
        gradient_accumulation_steps=1, num_iterations=1, max_completion_length=args.length,
        temperature=1.0, top_p=1.0, top_k=0, shuffle_dataset=False,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=args.adam_eps, weight_decay=0.0, max_grad_norm=1.0, max_steps=args.steps,
        logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True, bf16=False,
        dataloader_pin_memory=False, seed=args.seed, log_completions=False)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32),
        processing_class=AutoTokenizer.from_pretrained(args.model), reward_funcs=reward, args=config,
        train_dataset=dataset, callbacks=[clock])
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    ends = clock.ends
    step_s = [ends[0] - clock.begin] + [b - a for a, b in zip(ends, ends[1:])]
    timed = step_s[args.warmup_steps:]
    samples = args.prompts_per_step * args.group_size
    result = {
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "steps": len(step_s), "samples_per_step": samples, "timed_steps": len(timed),
        "samples_per_s": samples * len(timed) / sum(timed), "step_s": step_s,
        "reward_per_step": [entry["reward"] for entry in logs],
        "response_len_mean": statistics.fmean(entry["completions/mean_length"] for entry in logs),
        "torch_threads": torch.get_num_threads(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"trl samples_per_s={result['samples_per_s']:.1f} reward_mean={statistics.fmean(result['reward_per_step']):.3f}")


if __name__ == "__main__":
    main()
