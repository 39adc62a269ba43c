"""Checkpoints move between transformers' MiniMaxForCausalLM and ours, with the same logits."""

from __future__ import annotations

import pytest
import torch
import transformers
from minimax_reference import hf_config, hf_model

import cispo.model as cm


def _inputs(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, 150), generator=g)  # 150 tokens: 9 full 16-token blocks and a partial one


@pytest.mark.parametrize("tied,chunk", [(False, 64), (True, 16), (False, 7)])
def test_hf_checkpoint_loads_into_ours_with_equal_logits(tmp_path, tied, chunk):
    """Our lightning block (chunk) need not be transformers' block_size (16 here): the sum is exact."""
    hf = hf_model(hf_config(tie_word_embeddings=tied))
    hf.save_pretrained(tmp_path)
    ours = cm.from_pretrained(tmp_path).eval()
    ours.config.lightning_chunk_size = chunk
    x = _inputs()
    with torch.no_grad():
        expected, got = hf(x).logits, ours(x).logits
    assert expected.abs().max() > 0.5  # the comparison means something
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_our_checkpoint_loads_into_hf_with_equal_logits(tmp_path):
    ours = cm.LightningMoELM(cm.ModelConfig.from_dict(hf_config().to_dict())).eval()
    ours.save_pretrained(tmp_path)
    hf = transformers.MiniMaxForCausalLM.from_pretrained(tmp_path).eval()
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-4, rtol=0)
    # And back: ours -> disk -> ours is exact.
    again = cm.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_partial_rope_both_ways(tmp_path, partial_rope_reference):
    """Half of each softmax head rotated (MiniMax-Text-01's rotary_dim = head_dim / 2)."""
    config = hf_config(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    hf = hf_model(config)
    partial_rope_reference(hf)
    hf.save_pretrained(tmp_path / "hf")
    ours = cm.from_pretrained(tmp_path / "hf").eval()
    assert ours.config.rotary_dim == 16
    x = _inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-4, rtol=0)
    ours.save_pretrained(tmp_path / "ours")
    hf2 = transformers.MiniMaxForCausalLM.from_pretrained(tmp_path / "ours").eval()
    partial_rope_reference(hf2)
    with torch.no_grad():
        torch.testing.assert_close(hf2(x).logits, hf(x).logits, atol=1e-4, rtol=0)


def test_parameter_names_are_transformers_names():
    hf = hf_model(hf_config())
    ours = cm.LightningMoELM(cm.ModelConfig.from_dict(hf.config.to_dict()))
    assert dict((n, p.shape) for n, p in ours.named_parameters()) == dict(
        (n, p.shape) for n, p in hf.named_parameters()
    )


def test_config_round_trip_and_errors(tmp_path):
    config = cm.ModelConfig.from_dict(hf_config().to_dict())
    config.to_json(tmp_path / "config.json")
    assert cm.ModelConfig.from_json(tmp_path / "config.json") == config
    legacy = cm.ModelConfig.from_dict({"num_hidden_layers": 3, "attn_type_list": [0, 0, 1], "rotary_dim": 16, "head_dim": 32})
    assert legacy.layer_types == ["linear_attention", "linear_attention", "full_attention"] and legacy.rotary_dim == 16
    with pytest.raises(ValueError, match="layer_types has 2 entries but num_hidden_layers is 3"):
        cm.ModelConfig(num_hidden_layers=3, layer_types=["full_attention"] * 2)
    with pytest.raises(ValueError, match="not divisible"):
        cm.ModelConfig(num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(ValueError, match="sliding_window=128 is not supported"):
        cm.ModelConfig.from_dict(hf_config(sliding_window=128).to_dict())
