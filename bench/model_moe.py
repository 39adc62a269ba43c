"""One MoE layer's forward: ours vs transformers' MiniMaxSparseMoeBlock, same weights, same run.

transformers 5.19 runs its experts through an "experts implementation": `grouped_mm`
(its default when a model is loaded) or `eager` (a Python loop over the experts hit,
with one-hot masks). Both are timed, against a floor no implementation beats on this
machine: the layer's FLOPs (`moe_token_flops`: router and k routed experts per token) at
the FP32 GEMM rate measured in the same run; grouped_mm/floor bounds the speedup any
implementation could have over transformers. Token counts cover decoding (32), prefill
and training (512 to 16K). CPU, FP32, 2 threads (`--threads`). `--quick`: fewer, smaller points.
"""

from __future__ import annotations

import argparse

import torch
from model_common import hf_config, interleaved_best, keep_large_allocations, matmul_flops, moe_token_flops
from transformers.models.minimax.modeling_minimax import MiniMaxSparseMoeBlock

import cispo.model as cm
from cispo.model.moe import SparseMoeBlock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller token counts")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the figures use 2)")
    args = parser.parse_args()
    keep_large_allocations()
    torch.set_num_threads(args.threads)
    config = hf_config()
    torch.manual_seed(0)
    ours_config = cm.ModelConfig.from_dict(config.to_dict())
    ours = SparseMoeBlock(ours_config).eval()
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.02)
    refs = {}
    for impl in ("grouped_mm", "eager"):
        cfg = hf_config()
        cfg._experts_implementation = impl
        refs[impl] = MiniMaxSparseMoeBlock(cfg).eval()
        refs[impl].load_state_dict(ours.state_dict())

    counts = [32, 512, 2048] if args.quick else [32, 512, 4096, 16384]
    gemm = matmul_flops()
    print(f"E={config.num_local_experts} top-{config.num_experts_per_tok}, hidden {config.hidden_size}, "
          f"expert width {config.intermediate_size}; fp32 GEMM {gemm / 1e9:.1f} GFLOP/s")
    print(f"{'tokens':>7} {'ours ms':>9} {'hf grouped_mm':>14} {'ratio':>6} {'hf eager':>9} {'ratio':>6} "
          f"{'floor ms':>9} {'grouped_mm/floor':>17}")
    for T in counts:
        x = torch.randn(1, T, config.hidden_size, generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            torch.testing.assert_close(ours(x[0])[0], refs["grouped_mm"](x)[0], atol=1e-5, rtol=1e-4)
            t = interleaved_best(
                {"ours": lambda: ours(x[0]), "grouped_mm": lambda: refs["grouped_mm"](x), "eager": lambda: refs["eager"](x)},
                rounds=30 if T <= 512 else 5,
            )
        floor = T * moe_token_flops(ours_config) / gemm
        print(f"{T:>7} {t['ours'] * 1e3:>9.2f} {t['grouped_mm'] * 1e3:>14.2f} {t['grouped_mm'] / t['ours']:>5.2f}x "
              f"{t['eager'] * 1e3:>9.2f} {t['eager'] / t['ours']:>5.2f}x {floor * 1e3:>9.2f} "
              f"{t['grouped_mm'] / floor:>16.2f}x")


if __name__ == "__main__":
    main()
