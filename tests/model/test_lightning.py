"""The vectorised lightning attention equals the naive O(n^2) decay-masked sum, values and gradients."""

from __future__ import annotations

import pytest
import torch
from minimax_reference import naive_lightning

from cispo.model.lightning import decay_slopes, decode_step, lightning_attention
from cispo.model.packing import PackedLayout

H, D = 4, 32


def _qkv(T: int, seed: int = 0, dtype=torch.float32, grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(T, H, D, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize("T,block", [(200, 32), (256, 64), (5, 16), (64, 1)])
@pytest.mark.parametrize("layer", [0, 3])
def test_values_equal_naive(T, block, layer):
    slope = decay_slopes(H, layer, 4)
    q, k, v = _qkv(T)
    out, _ = lightning_attention(q, k, v, slope, PackedLayout.uniform(1, T, block, q.device))
    ref = naive_lightning(q.double(), k.double(), v.double(), slope.double()).float()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("T", [150, 20])  # several blocks; one block (no state crosses a block)
def test_gradients_equal_naive(T):
    slope = decay_slopes(H, 2, 4)
    q, k, v = _qkv(T, grad=True)
    qn, kn, vn = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    w = torch.randn(T, H, D)
    (lightning_attention(q, k, v, slope, PackedLayout.uniform(1, T, 32, q.device))[0] * w).sum().backward()
    (naive_lightning(qn, kn, vn, slope) * w).sum().backward()
    for a, b in [(q, qn), (k, kn), (v, vn)]:
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5 * b.grad.abs().max().item())


def test_packed_documents_reset_state_at_boundaries():
    slope = decay_slopes(H, 1, 4)
    lengths = [5, 40, 17, 32, 1]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = _qkv(sum(lengths))
    out, final = lightning_attention(q, k, v, slope, PackedLayout.from_cu_seqlens(cu, 16), return_state=True)
    for doc, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        alone, alone_final = lightning_attention(
            q[a:b], k[a:b], v[a:b], slope, PackedLayout.uniform(1, b - a, 16, q.device), return_state=True
        )
        torch.testing.assert_close(out[a:b], naive_lightning(q[a:b], k[a:b], v[a:b], slope), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(out[a:b], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(final[doc], alone_final[0], rtol=1e-5, atol=1e-5)


def test_short_documents_take_shorter_blocks_with_the_same_result():
    slope = decay_slopes(H, 1, 4)
    cu = torch.tensor([0, 9, 14, 27], dtype=torch.int32)  # the longest document: 13 tokens
    q, k, v = _qkv(27)
    layouts = {chunk: PackedLayout.from_cu_seqlens(cu, chunk) for chunk in (4, 16, 64)}
    assert {c: lay.block_size for c, lay in layouts.items()} == {4: 4, 16: 16, 64: 16}
    results = [lightning_attention(q, k, v, slope, lay, return_state=True) for lay in layouts.values()]
    for out, final in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(final, results[0][1], rtol=1e-5, atol=1e-5)


def test_final_state_continues_with_decode_steps():
    """Prefill then token-by-token decode equals one pass over the whole sequence."""
    slope = decay_slopes(H, 0, 4)
    q, k, v = _qkv(90)
    _, state = lightning_attention(q[:70], k[:70], v[:70], slope, PackedLayout.uniform(1, 70, 16, q.device), True)
    state = state.contiguous()  # as the decode cache holds it
    outs = [decode_step(q[t : t + 1], k[t : t + 1], v[t : t + 1], state, slope) for t in range(70, 90)]
    torch.testing.assert_close(torch.cat(outs), naive_lightning(q, k, v, slope)[70:], rtol=1e-5, atol=1e-4)


def test_bf16_inputs_keep_an_fp32_state():
    slope = decay_slopes(H, 1, 4)
    q, k, v = _qkv(64, dtype=torch.bfloat16)
    out, state = lightning_attention(q, k, v, slope, PackedLayout.uniform(1, 64, 16, q.device), return_state=True)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    ref = naive_lightning(q.float(), k.float(), v.float(), slope)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_memory_is_linear_in_length():
    """The largest intermediate grows with T * block, not T^2: count elements of saved tensors."""
    slope = decay_slopes(H, 1, 4)

    def saved_elements(T: int) -> int:
        q, k, v = _qkv(T, grad=True)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lightning_attention(q, k, v, slope, PackedLayout.uniform(1, T, 64, q.device))
        return total

    small, large = saved_elements(1024), saved_elements(4096)
    assert large < 4.5 * small  # quadratic would be 16x
