"""Forward pass at long context: our model vs transformers' MiniMaxForCausalLM, same weights, same run.

Prints, per length, both times and their ratio, and the roofline: the fewest matmul FLOPs
an exact forward needs (`forward_flops`) over this machine's FP32 GEMM rate, measured in
the same run, is a time no implementation beats here, so t_hf / that floor bounds the
speedup any implementation could have over transformers. Then our t(32K)/t(8K) (4.0 is
linear; the one softmax layer is quadratic and pushes it up); the lightning kernel's own
scaling; and the kernel's achieved FLOP/s at 16K as a fraction of the GEMM rate.
CPU, FP32, 2 threads (`--threads`). `--quick` uses short lengths (a smoke run, not the figures).
"""

from __future__ import annotations

import argparse

import torch
from model_common import best_time, forward_flops, interleaved_best, keep_large_allocations, matmul_flops, twin_models

from cispo.model.lightning import decay_slopes, lightning_attention
from cispo.model.packing import PackedLayout


def lightning_flops(T: int, H: int, d: int, chunk: int) -> float:
    """Matmul FLOPs our kernel executes (the masked half of each block included; the scan's
    O(blocks log blocks d^2) elementwise work is not counted)."""
    nb = -(-T // chunk)
    intra = 2 * 2 * H * nb * chunk * chunk * d  # Q K^T and (.) V per block
    inter = 2 * 2 * H * nb * chunk * d * d  # K^T V per block and Q S per block
    return intra + inter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short lengths, for a smoke run")
    parser.add_argument("--skip-hf-above", type=int, default=32768, help="skip transformers above this length")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the figures use 2)")
    args = parser.parse_args()
    keep_large_allocations()
    torch.set_num_threads(args.threads)
    lengths = [1024, 2048, 4096] if args.quick else [4096, 8192, 16384, 32768]
    hf, ours = twin_models()
    gemm = matmul_flops()
    print(f"fp32 GEMM (2048^3) on this machine now: {gemm / 1e9:.1f} GFLOP/s")

    ours_t: dict[int, float] = {}
    print(f"{'tokens':>7} {'ours s':>8} {'hf s':>8} {'hf/ours':>8} {'floor s':>8} {'hf/floor':>9}  (floor: fewest FLOPs at the GEMM rate)")
    for T in lengths:
        ids = torch.randint(0, 512, (1, T), generator=torch.Generator().manual_seed(T))
        skip_hf = T > args.skip_hf_above
        fns = {"ours": lambda: ours(ids)} if skip_hf else {"ours": lambda: ours(ids), "hf": lambda: hf(ids)}
        with torch.no_grad():
            t = interleaved_best(fns, rounds=1 if T >= 32768 else 2 if T >= 16384 else 3)
        t_ours, t_hf = t["ours"], t.get("hf")
        ours_t[T] = t_ours
        floor = forward_flops(ours.config, T) / gemm
        if skip_hf:
            print(f"{T:>7} {t_ours:>8.2f} {'skipped':>8} {'':>8} {floor:>8.2f}")
        else:
            print(f"{T:>7} {t_ours:>8.2f} {t_hf:>8.2f} {t_hf / t_ours:>7.2f}x {floor:>8.2f} {t_hf / floor:>8.2f}x")
    lo, hi = lengths[-3], lengths[-1]
    floor_ratio = forward_flops(ours.config, hi) / forward_flops(ours.config, lo)
    print(f"ours t({hi})/t({lo}) = {ours_t[hi] / ours_t[lo]:.2f}  (linear = {hi / lo:.1f}; "
          f"the fewest FLOPs grow {floor_ratio:.2f}x: the softmax layer's share is quadratic)")

    # The lightning kernel alone: one layer's q, k, v at head count and width of the model.
    H, d, chunk = ours.config.num_attention_heads, ours.config.head_dim, ours.config.lightning_chunk_size
    slope = decay_slopes(H, 1, ours.config.num_hidden_layers)
    kernel_t = {}
    for T in (lo, hi, 16384 if not args.quick else hi):
        q, k, v = (torch.randn(T, H, d) for _ in range(3))
        layout = PackedLayout.uniform(1, T, chunk, q.device)
        with torch.no_grad():
            kernel_t[T] = best_time(lambda: lightning_attention(q, k, v, slope, layout), 3)
    print(f"lightning kernel t({hi})/t({lo}) = {kernel_t[hi] / kernel_t[lo]:.2f}")
    T = 16384 if not args.quick else hi
    achieved = lightning_flops(T, H, d, chunk) / kernel_t[T]
    print(
        f"lightning kernel at {T}: {achieved / 1e9:.1f} GFLOP/s = {achieved / gemm:.0%} of the GEMM rate "
        f"(chunk {chunk}, H {H}, d {d})"
    )


if __name__ == "__main__":
    main()
