"""Fixtures of the model tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers.models.minimax import modeling_minimax

# The suite runs with --import-mode=importlib, which puts no test folder on sys.path; the
# model tests share one reference module, so this folder goes on it (before the imports below).
sys.path.insert(0, str(Path(__file__).parent))

from minimax_reference import partial_apply_rotary_pos_emb, patch_partial_rope  # noqa: E402


@pytest.fixture
def partial_rope_reference(monkeypatch):
    """transformers 5.19's MiniMax ignores partial_rotary_factor and rotates the whole head.

    This test-only patch makes the reference rotate the leading rotary_dim channels, so a
    partial-RoPE config can still be compared key for key; call it on each built model.
    """
    monkeypatch.setattr(modeling_minimax, "apply_rotary_pos_emb", partial_apply_rotary_pos_emb)
    return patch_partial_rope


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on a shared 2-core machine run faster and steadier on one thread; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
