"""The built-in sampler on dense checkpoints: transformers' Qwen2 and Llama, logit for logit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from cispo.model import Sampler
from cispo.model.dense import DenseConfig, DenseLM, UnsupportedCheckpoint
from cispo.policy import PolicyError, check_servable
from cispo.types import SamplingParams

VOCAB = 300
SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)


def _checkpoint(tmp_path, hf_config) -> AutoModelForCausalLM:
    """A random transformers model with every bias non-zero, saved to tmp_path."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.3)
    model.save_pretrained(tmp_path)
    return model


CONFIGS = {
    "qwen2-tied": Qwen2Config(**SIZES, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2-untied": Qwen2Config(**SIZES, tie_word_embeddings=False),
    "llama-biases": LlamaConfig(**SIZES, attention_bias=True, mlp_bias=True, head_dim=32),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_prefill_and_decode_give_transformers_logits(tmp_path, name):
    hf = _checkpoint(tmp_path, CONFIGS[name])
    ours = DenseLM.from_pretrained(tmp_path)
    prompts = [torch.randint(0, VOCAB, (n,)).tolist() for n in (9, 23, 4)]
    cache = ours.new_cache(4, 40)
    slots = torch.tensor([3, 0, 1])  # not in order: the cache rows are gathered
    cu = torch.tensor([0, 9, 32, 36])
    logits, routing = ours.prefill(torch.tensor(sum(prompts, [])), cu, cache, slots)
    assert routing is None
    nxt = torch.randint(0, VOCAB, (3,))
    decoded, _ = ours.decode(nxt, cache, slots)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ref = hf(torch.tensor([p + [int(nxt[i])]])).logits[0]
            torch.testing.assert_close(logits[i], ref[-2], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(decoded[i], ref[-1], atol=1e-5, rtol=1e-5)


def test_sampler_on_a_dense_checkpoint_reports_the_learners_logprobs(tmp_path):
    hf = _checkpoint(tmp_path, CONFIGS["qwen2-tied"])
    sampler = Sampler(DenseLM.from_pretrained(tmp_path), max_batch=5)  # fewer slots than samples: refills
    prompts = [torch.randint(0, VOCAB, (n,)).tolist() for n in (12, 5, 20)]
    out = sampler.generate(prompts, SamplingParams(n=3, max_tokens=7, temperature=0.8, seed=3))
    for prompt, completions in zip(prompts, out):
        assert len(completions) == 3
        for c in completions:
            assert len(c.token_ids) == 7 and c.finish_reason == "length" and c.routed_experts is None
            with torch.no_grad():
                logits = hf(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1:-1]
            ref = (logits / 0.8).log_softmax(-1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=1e-4)


def test_a_checkpoint_with_older_transformers_rope_buffers_loads(tmp_path):
    hf = _checkpoint(tmp_path, CONFIGS["llama-biases"])
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(16)
    save_file(tensors, tmp_path / "model.safetensors")
    ours = DenseLM.from_pretrained(tmp_path)
    cache, prompt = ours.new_cache(1, 8), torch.tensor([3, 1, 4, 1, 5])
    logits, _ = ours.prefill(prompt, torch.tensor([0, 5]), cache, torch.tensor([0]))
    with torch.no_grad():
        torch.testing.assert_close(logits[0], hf(prompt[None]).logits[0, -1], atol=1e-5, rtol=1e-5)


def test_update_weights_takes_the_learners_names(tmp_path):
    """The learner is transformers' module: its named_parameters(remove_duplicate=False), tied head
    included, load as they are, over weights the sampler has decoded with, and its log-probs are then the
    learner's (greedy tokens alone barely depend on a small random model's layers)."""
    _checkpoint(tmp_path, CONFIGS["qwen2-tied"])
    sampler = Sampler(DenseLM.from_pretrained(tmp_path))
    prompt = [5, 17, 42]
    sampler.generate([prompt], SamplingParams(n=1, max_tokens=5))  # decodes with the checkpoint's weights first
    torch.manual_seed(1)
    learner = AutoModelForCausalLM.from_config(CONFIGS["qwen2-tied"], dtype=torch.float32).eval()
    sampler.update_weights(learner.named_parameters(remove_duplicate=False), version=4)
    completion = sampler.generate([prompt], SamplingParams(n=1, max_tokens=5, temperature=0.0))[0][0]
    with torch.no_grad():
        greedy = learner.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False)[0, 3:].tolist()
        logits = learner(torch.tensor([prompt + greedy])).logits[0, len(prompt) - 1:-1]
    assert completion.token_ids == greedy and completion.policy_version == 4
    learner_logprobs = logits.log_softmax(-1).gather(-1, torch.tensor(greedy)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(completion.logprobs), learner_logprobs, atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError, match="no parameter named"):
        sampler.update_weights([("model.layers.0.mlp.experts.gate_up_proj", torch.zeros(1))], version=5)


@pytest.mark.parametrize("change, key", [
    ({"model_type": "qwen3"}, "model_type 'qwen3'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
    ({"use_sliding_window": True, "sliding_window": 16}, "sliding_window"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
])
def test_checkpoints_it_cannot_run_are_refused_before_any_actor_starts(tmp_path, change, key):
    _checkpoint(tmp_path, CONFIGS["qwen2-tied"])
    check_servable(tmp_path, "builtin")  # as saved, it runs
    config = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(UnsupportedCheckpoint, match=key):
        DenseConfig.from_hf({**config, **change})
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(PolicyError, match=f"{tmp_path}.*{key}.*use rollout=vllm"):
        check_servable(tmp_path, "builtin")
