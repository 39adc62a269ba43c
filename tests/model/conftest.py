"""Fixtures of the model tests."""

from __future__ import annotations

import pytest
from minimax_reference import partial_apply_rotary_pos_emb, patch_partial_rope
from transformers.models.minimax import modeling_minimax


@pytest.fixture
def partial_rope_reference(monkeypatch):
    """transformers 5.19's MiniMax ignores partial_rotary_factor and rotates the whole head.

    This test-only patch makes the reference rotate the leading rotary_dim channels, so a
    partial-RoPE config can still be compared key for key; call it on each built model.
    """
    monkeypatch.setattr(modeling_minimax, "apply_rotary_pos_emb", partial_apply_rotary_pos_emb)
    return patch_partial_rope
