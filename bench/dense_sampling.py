"""The built-in sampler on a dense checkpoint against transformers' `generate`, same model, side by side.

The model is vs_trl's tiny Qwen2 shape (hidden 128, 2 layers, 4 heads, 2 KV heads, FFN 512), random
init, FP32. Every prompt gets exactly `--new` tokens (temperature 1, no stop tokens), so both sides
produce the same number of tokens. At this size a decoding step's matmuls are a small part of its
time; the rest is the number of ops and the Python around them, which is what this compares.
Each side runs `--rounds` times in turn and keeps its best run.

    .venv/bin/python bench/dense_sampling.py [--batch 64] [--prompt 10] [--new 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from model_common import interleaved_best
from transformers import AutoModelForCausalLM, Qwen2Config

from cispo.model import Sampler
from cispo.model.dense import DenseLM
from cispo.types import SamplingParams

SHAPE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=512, tie_word_embeddings=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="prompts, one sample each, decoded together")
    parser.add_argument("--prompt", type=int, default=10, help="tokens per prompt")
    parser.add_argument("--new", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--vocab", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Qwen2Config(**SHAPE, vocab_size=args.vocab, max_position_embeddings=args.prompt + args.new)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        sampler = Sampler(DenseLM.from_pretrained(directory), max_batch=args.batch)
    prompts = torch.randint(0, args.vocab, (args.batch, args.prompt))
    params = SamplingParams(temperature=1.0, max_tokens=args.new, seed=0)

    def ours() -> None:
        out = sampler.generate(prompts.tolist(), params)
        assert all(len(c.token_ids) == args.new for group in out for c in group)

    def transformers_generate() -> None:
        with torch.no_grad():
            out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0,
                              top_k=0, top_p=1.0, max_new_tokens=args.new, min_new_tokens=args.new, pad_token_id=0)
        assert out.shape == (args.batch, args.prompt + args.new)

    ours(), transformers_generate()  # warm-up
    best = interleaved_best({"ours": ours, "transformers": transformers_generate}, args.rounds)
    tokens = args.batch * args.new
    print(f"{args.batch} prompts of {args.prompt} tokens, {args.new} new tokens each, {args.threads} threads, "
          f"best of {args.rounds}")
    for name, seconds in best.items():
        print(f"  {name:13s} {seconds:.3f} s  {tokens / seconds:8.0f} tokens/s  "
              f"{seconds / args.new * 1e3:.2f} ms per decoding step")
    print(f"ours / transformers: {best['transformers'] / best['ours']:.2f}x")


if __name__ == "__main__":
    main()
