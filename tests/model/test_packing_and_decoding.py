"""Packed documents equal separate forwards; cached decoding equals the full forward."""

from __future__ import annotations

import torch
from minimax_reference import hf_config

import cispo.model as cm


def _model(seed: int = 0, **overrides) -> cm.LightningMoELM:
    torch.manual_seed(seed)
    return cm.LightningMoELM(cm.ModelConfig.from_dict({**hf_config(**overrides).to_dict(), "lightning_chunk_size": 16})).eval()


def test_packed_forward_equals_separate_forwards():
    model = _model()
    g = torch.Generator().manual_seed(3)
    docs = [torch.randint(0, 256, (n,), generator=g) for n in (23, 50, 1, 37)]  # boundaries mid-block
    cu = torch.tensor([0, 23, 73, 74, 111], dtype=torch.int32)
    with torch.no_grad():
        packed = model(torch.cat(docs)[None], cu_seqlens=cu).logits[0]  # (111, V)
        for doc, a, b in zip(docs, cu[:-1].tolist(), cu[1:].tolist()):
            torch.testing.assert_close(packed[a:b], model(doc[None]).logits[0], atol=1e-5, rtol=0)


def test_packed_gradients_equal_separate_gradients():
    model = _model()
    docs = [torch.randint(0, 256, (n,)) for n in (19, 30)]
    cu = torch.tensor([0, 19, 49], dtype=torch.int32)
    model(torch.cat(docs)[None], cu_seqlens=cu).logits.logsumexp(-1).sum().backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for doc in docs:
        model(doc[None]).logits.logsumexp(-1).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(packed[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_greedy_decoding_matches_full_forward_argmax():
    """Prefill two prompts into slots, decode greedily; each step's logits equal the full forward's."""
    model = _model(1)
    prompts = [torch.randint(0, 256, (n,)) for n in (21, 9)]
    cache = model.new_cache(num_slots=3, max_len=64)
    slots = torch.tensor([2, 0])
    logits, _ = model.prefill(torch.cat(prompts), torch.tensor([0, 21, 30], dtype=torch.int32), cache, slots)
    seqs = [p.tolist() for p in prompts]
    for _ in range(25):  # crosses 16-token block boundaries in both
        for i, seq in enumerate(seqs):
            with torch.no_grad():
                full = model(torch.tensor([seq])).logits[0, -1]
            torch.testing.assert_close(logits[i], full, atol=1e-4, rtol=0)
            seq.append(int(full.argmax()))
        logits, _ = model.decode(torch.tensor([s[-1] for s in seqs]), cache, slots)
    assert cache.lengths[slots].tolist() == [len(s) for s in seqs]


def test_decode_subset_of_slots_leaves_others_untouched():
    model = _model(2)
    cache = model.new_cache(num_slots=2, max_len=32)
    model.prefill(torch.arange(10), torch.tensor([0, 5, 10], dtype=torch.int32), cache, torch.tensor([0, 1]))
    before = {i: s[1].clone() for i, s in cache.state.items()}
    model.decode(torch.tensor([7]), cache, torch.tensor([0]))
    assert all(torch.equal(before[i], cache.state[i][1]) for i in before)
    assert cache.lengths.tolist() == [6, 5]
