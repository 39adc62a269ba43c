"""vLLM serving our hybrid lightning-attention MoE through the plugin: parity with our model, against the real engine.

One engine (the job's `VLLMWorker`, in this process) serves a checkpoint our code wrote
with partial RoPE, untied embeddings and the FP32 LM head; every check compares it with
`cispo.model` on the same weights in float32. Last, a short `model=minimax_tiny rollout=vllm`
job (tied embeddings) trains with vLLM rollout workers as Ray actors.
"""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from cispo.model import LightningMoELM, ModelConfig, Sampler
from cispo.model.lightning import decay_slopes, lightning_attention
from cispo.model.packing import PackedLayout
from cispo.model.vllm_plugin import lightning_kernels
from cispo.types import SamplingParams

VOCAB = 512


def _config() -> ModelConfig:
    return ModelConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, layer_types=["linear_attention"] * 3 + ["full_attention"],
        num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=256, tie_word_embeddings=False,
        rope_parameters={"partial_rotary_factor": 0.5}, bos_token_id=None, eos_token_id=None)


def _prompts(lengths=(7, 70, 1, 23, 40)) -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _logprobs(model: LightningMoELM, prompt: list[int], response: list[int], temperature: float = 1.0) -> list[float]:
    """Our model's log-prob of every token after the first, of the tempered distribution."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = (model(ids).logits.float() / temperature).log_softmax(-1)[0]  # (T, V)
    return logp[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1).tolist()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Our model, saved with a 512-token tokenizer, and a vLLM worker serving the directory."""
    from cispo.rollout.vllm_worker import VLLMWorker

    path = tmp_path_factory.mktemp("hybrid")
    torch.manual_seed(0)
    model = LightningMoELM(_config()).eval()
    model.save_pretrained(path)
    vocab = {f"t{i}": i for i in range(VOCAB)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0"))).save_pretrained(path)
    worker = VLLMWorker(str(path), seed=0, max_model_len=256)
    yield model, worker


@pytest.mark.slow
def test_prompt_and_sampled_logprobs_equal_our_model(served):
    """A batch of prompts of different lengths: every prompt token's and sampled token's log-prob."""
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.inputs import TokensPrompt

    model, worker = served
    prompts = _prompts()
    params = VLLMSamplingParams(temperature=1.0, max_tokens=12, prompt_logprobs=0, logprobs=0, seed=1)
    outputs = worker.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    for prompt, out in zip(prompts, outputs):
        response = list(out.outputs[0].token_ids)
        served_lp = ([step[t].logprob for step, t in zip(out.prompt_logprobs[1:], prompt[1:])]
                     + [step[t].logprob for step, t in zip(out.outputs[0].logprobs, response)])
        torch.testing.assert_close(torch.tensor(served_lp), torch.tensor(_logprobs(model, prompt, response)),
                                   atol=1e-4, rtol=0)


@pytest.mark.slow
def test_greedy_64_tokens_equal_our_model_and_builtin_sampler(served):
    model, worker = served
    prompts = _prompts()
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=64)
    served_tokens = [c[0].token_ids for c in worker.generate(prompts, greedy)]
    assert served_tokens == [c[0].token_ids for c in Sampler(model, max_batch=8).generate(prompts, greedy)]
    for prompt, response in zip(prompts, served_tokens):
        # Every served token is our full forward's argmax after the tokens before it: the same greedy path.
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1]  # (64, V)
        assert logits.argmax(-1).tolist() == response


@pytest.mark.slow
def test_continuous_batching_mixes_prefill_and_decode(served):
    """Requests added while others decode: the engine runs steps holding both, states stay per sequence."""
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.inputs import TokensPrompt

    model, worker = served
    engine = worker.llm.llm_engine
    prompts = _prompts((31, 9, 55, 4))
    params = VLLMSamplingParams(temperature=0.0, max_tokens=20, logprobs=0)
    finished = {}

    def step() -> None:
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0]

    for i, p in enumerate(prompts[:2]):
        engine.add_request(f"early{i}", TokensPrompt(prompt_token_ids=p), params)
    for _ in range(5):  # the first two are decoding now
        step()
    for i, p in enumerate(prompts[2:]):
        engine.add_request(f"late{i}", TokensPrompt(prompt_token_ids=p), params)
    while engine.has_unfinished_requests():
        step()
    names = ["early0", "early1", "late0", "late1"]
    for name, prompt in zip(names, prompts):
        out = finished[name]
        response = list(out.token_ids)
        served_lp = [step_lp[t].logprob for step_lp, t in zip(out.logprobs, response)]
        torch.testing.assert_close(torch.tensor(served_lp),
                                   torch.tensor(_logprobs(model, prompt, response)[len(prompt) - 1:]),
                                   atol=1e-4, rtol=0)


@pytest.mark.slow
def test_prefix_caching_is_off_and_a_repeated_prompt_samples_the_same(served):
    """The plugin turns prefix caching off (the lightning state is one row per sequence, not per block)."""
    _, worker = served
    cache = worker.llm.llm_engine.vllm_config.cache_config
    assert cache.enable_prefix_caching is False and cache.mamba_cache_mode == "none"
    prompts = [_prompts()[1]] * 3  # the same 70-token prompt three times, and again in a second call
    params = SamplingParams(n=1, temperature=0.0, max_tokens=8)
    first, second = worker.generate(prompts, params), worker.generate(prompts, params)
    logprobs = [c[0].logprobs for c in first + second]
    assert all(lp == logprobs[0] for lp in logprobs)


@pytest.mark.slow
def test_logprobs_after_a_weight_push_equal_the_learners(served):
    """The learner's in-memory names (stacked experts, lm_head) pushed through the worker's push path."""
    model, worker = served
    learner = LightningMoELM(_config()).eval()
    learner.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    # What a learner rank sends: every parameter under its name, tied ones under both.
    worker.update_weights([(n, p.detach().clone()) for n, p in learner.named_parameters(remove_duplicate=False)],
                          version=3)
    prompts = _prompts()
    params = SamplingParams(n=2, temperature=0.7, max_tokens=16, seed=4)
    for prompt, group in zip(prompts, worker.generate(prompts, params)):
        for c in group:
            assert c.policy_version == 3
            expected = _logprobs(learner, prompt, c.token_ids, temperature=0.7)[len(prompt) - 1:]
            torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(expected), atol=1e-4, rtol=0)


def test_chunked_prefill_continues_the_state_of_the_earlier_chunk():
    """The CPU prefill kernel split at any point gives the one-shot result (vLLM's chunked prefill)."""
    torch.manual_seed(0)
    H, d, T = 4, 32, 150
    q, k, v = (torch.randn(T, H, d) * 0.3 for _ in range(3))
    slope = decay_slopes(H, 1, 4)
    whole, _ = lightning_attention(q, k, v, slope, PackedLayout.from_cu_seqlens(torch.tensor([0, T]), 64))
    states = torch.zeros(3, H, d, d)
    rows = torch.tensor([2])
    parts = [lightning_kernels.prefill(q[a:b], k[a:b], v[a:b], slope, torch.tensor([0, b - a]), states, rows, False)
             for a, b in ((0, 37), (37, 149))]
    parts.append(lightning_kernels.decode(q[149:], k[149:], v[149:], slope, states, rows, False))
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_checkpoint_transformers_wrote_greedy_equals_transformers_and_ours(ray_session, tmp_path):
    """transformers' MiniMaxForCausalLM writes the checkpoint (tied embeddings, residual factors
    not 1, two softmax layers); a vLLM rollout actor serves it; 64 greedy tokens agree with
    transformers' `generate` and our built-in sampler (full RoPE: transformers ignores partial RoPE)."""
    import transformers

    from cispo.model import from_pretrained
    from cispo.rollout.engines import EngineGroup, EngineSpec

    torch.manual_seed(1)
    hf = transformers.MiniMaxForCausalLM(transformers.MiniMaxConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=128, num_hidden_layers=5, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, num_local_experts=4, num_experts_per_tok=2, block_size=16,
        layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention", "full_attention"],
        full_attn_alpha_factor=0.8, full_attn_beta_factor=1.2, linear_attn_alpha_factor=0.9,
        linear_attn_beta_factor=1.1, mlp_alpha_factor=0.95, mlp_beta_factor=1.05, initializer_range=0.3,
        tie_word_embeddings=True, max_position_embeddings=256, bos_token_id=None, eos_token_id=None)).eval()
    hf.save_pretrained(tmp_path)  # initializer_range 0.3: greedy paths that do not collapse onto one token
    vocab = {f"t{i}": i for i in range(VOCAB)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0"))).save_pretrained(tmp_path)
    prompts = _prompts((9, 33, 2))
    expected = []
    for p in prompts:
        with torch.no_grad():
            out = hf.generate(torch.tensor([p]), max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)
        expected.append(out[0, len(p):].tolist())
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=64)
    builtin = [c[0].token_ids for c in Sampler(from_pretrained(tmp_path), max_batch=4).generate(prompts, greedy)]
    engines = EngineGroup(EngineSpec("vllm", str(tmp_path), 1.0, 0.0, {"max_model_len": 256}), 1, 300, 60)
    try:
        served = [c[0].token_ids for c in engines.generate(prompts, greedy)]
    finally:
        engines.shutdown()
    assert served == expected == builtin


@pytest.mark.slow
def test_hybrid_job_trains_with_vllm_rollouts(ray_session, tmp_path):
    """`model=minimax_tiny rollout=vllm`: the job samples with vLLM, pushes weights in memory after
    each step, and sampler and learner agree on token probabilities."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import cispo.cli  # noqa: F401  (registers the config schema)
    from cispo.config import validate
    from cispo.train import train

    overrides = ["model=minimax_tiny", "rollout=vllm", "trainer.steps=2", "trainer.sft_steps=2",
                 "trainer.save_every=0", f"trainer.output_dir={tmp_path / 'run'}", "rollout.prompts_per_step=4",
                 "algo.group_size=4", "task.eval_size=8", "logger.progress_bar=false"]
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        cfg = validate(OmegaConf.to_object(compose(config_name="config", overrides=overrides)))
    assert (cfg.model.arch, cfg.rollout.engine) == ("minimax", "vllm")
    result = train(cfg)
    assert result["steps"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    # Step 2 samples with the weights pushed after step 1: the push reached vLLM intact.
    assert all(m["learner/prob_corr"] >= 0.999 for m in steps), [m["learner/prob_corr"] for m in steps]
