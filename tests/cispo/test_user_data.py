"""Training on what users bring: the README's example command, HF checkpoints of other
architectures with their chat templates, and overlong prompts dropped and counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen3Config

from cispo.config import ConfigError, validate
from cispo.envs.dataset import DatasetTask
from cispo.train import train

ROOT = Path(__file__).parents[2]
EXAMPLE_DATA = ROOT / "examples" / "arith.jsonl"
EXAMPLE_REWARD = ROOT / "examples" / "my_reward.py"
CISPO_TRAIN = Path(sys.executable).parent / "cispo-train"
# The README's "Your own data" command, shortened to a few steps.
EXAMPLE_COMMAND = ["task=dataset", "task.path=examples/arith.jsonl", "reward.fn=examples/my_reward.py:reward"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tiny_checkpoint(directory: Path, arch: str) -> Path:
    """A random-init checkpoint of another architecture with a tokenizer that has a chat template
    (the dataset task's byte tokenizer: nothing can be downloaded here)."""
    tokenizer = DatasetTask.build_tokenizer()
    sizes = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                 tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlamaConfig(**sizes) if arch == "llama" else Qwen3Config(**sizes)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_the_readme_example_command_trains(tmp_path):
    """The exact command of the README, as a user runs it (a subprocess), for a few steps."""
    out = tmp_path / "run"
    res = subprocess.run([str(CISPO_TRAIN), *EXAMPLE_COMMAND, f"trainer.output_dir={out}", "trainer.steps=2",
                          "trainer.sft_steps=2", "trainer.save_every=0", "logger.progress_bar=false"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1].startswith("summary: steps=2")
    steps = [m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2] and all(m["reward/errors"] == 0 for m in steps)
    trained = read_jsonl(out / "trained_samples.jsonl")  # every step trained the full batch of prompts
    assert [len(r["prompt_indices"]) for r in trained] == [16, 16]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_another_architecture_trains_with_vllm_and_its_chat_template(ray_session, job_config, tmp_path, arch):
    """model.path names any HF causal LM vLLM serves; its config.json decides the class, and the
    checkpoint's tokenizer (saved with the job's checkpoint) brings its chat template."""
    checkpoint = tiny_checkpoint(tmp_path / arch, arch)
    cfg = validate(job_config(model__path=str(checkpoint), model__max_position_embeddings=256,
                              task__name="dataset", task__path=str(EXAMPLE_DATA), task__eval_size=8,
                              reward__fn=f"{EXAMPLE_REWARD}:reward", logger__table_every=1))
    result = train(cfg)
    steps = [m for m in read_jsonl(Path(cfg.trainer.output_dir) / "metrics.jsonl") if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert steps[0]["learner/prob_corr"] > 0.999  # the sampler and the learner agree token by token
    assert AutoModelForCausalLM.from_pretrained(result["checkpoint"]).config.model_type == arch

    # The chat rows the job sampled render through the checkpoint's own template: the encoder the job
    # builds from that tokenizer opens the assistant's turn (the ids themselves are the template's,
    # tests/envs/test_chat.py).
    from cispo.envs.chat import PromptEncoder

    task = DatasetTask(EXAMPLE_DATA, seed=cfg.task.seed, eval_size=8)
    encoder = PromptEncoder(AutoTokenizer.from_pretrained(result["checkpoint"]))
    index = read_jsonl(Path(cfg.trainer.output_dir) / "trained_samples.jsonl")[0]["prompt_indices"][0]
    assert encoder.uses_template and encoder.tokenizer.decode(encoder.encode(task.row(index).prompt)).endswith(
        "<|assistant|>\n")


def test_an_architecture_vllm_cannot_serve_is_refused_before_any_actor(tmp_path, job_config):
    checkpoint = tiny_checkpoint(tmp_path / "llama", "llama")
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "architectures": ["MyOwnForCausalLM"]}))
    with pytest.raises(ConfigError, match=r"architectures \['MyOwnForCausalLM'\].*vLLM serves none"):
        validate(job_config(model__path=str(checkpoint)))
    with pytest.raises(ConfigError, match="model.path: .*does not exist"):
        validate(job_config(model__path=str(tmp_path / "missing")))


@pytest.mark.slow
def test_overlong_prompts_are_dropped_counted_and_never_sampled(ray_session, job_config, tmp_path):
    """Rows whose prompt leaves no room for the response are consumed unsampled and counted."""
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"prompt": "x" * (4 if k % 2 else 200), "answer": "1", "k": k}) + "\n"
                            for k in range(40)))
    cfg = validate(job_config(model__arch="minimax", model__num_layers=4, model__softmax_every=4,
                              model__intermediate_size=256, rollout__engine="builtin", task__name="dataset",
                              task__path=str(data), task__eval_size=4, reward__fn=f"{EXAMPLE_REWARD}:reward"))
    train(cfg)
    steps = [m for m in read_jsonl(Path(cfg.trainer.output_dir) / "metrics.jsonl") if "reward/mean" in m]
    assert sum(m["data/dropped_rows"] for m in steps) > 0
    task = DatasetTask(data, seed=cfg.task.seed, eval_size=4)
    for record in read_jsonl(Path(cfg.trainer.output_dir) / "trained_samples.jsonl"):
        assert all(len(task.row(i).prompt) == 4 for i in record["prompt_indices"])
    last = steps[-1]["data/next_prompt"]  # every index below it consumed: trained or dropped, none lost
    trained = {i for r in read_jsonl(Path(cfg.trainer.output_dir) / "trained_samples.jsonl")
               for i in r["prompt_indices"]}
    assert trained | {i for i in range(int(last)) if len(task.row(i).prompt) == 200} == set(range(int(last)))
