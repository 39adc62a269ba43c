"""A real DeepSpeed engine (CPU accelerator, gloo) trains the model: one step lowers the loss."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(stage: int, checkpointing: bool) -> dict:
    """Run in a subprocess: ZeRO leaves process-group and accelerator state behind in the process."""
    script = Path(__file__).with_name("deepspeed_step.py")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(script), str(stage), "1" if checkpointing else "0", str(_free_port())],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stage,checkpointing", [(3, True), (2, False)])
def test_one_zero_step_changes_weights_and_lowers_loss(stage, checkpointing):
    result = _step(stage, checkpointing)
    assert result["loss_after"] < result["loss_before"] - 1e-3, result
    assert len(result["moved"]) == result["total"], result  # every parameter got a gradient and moved
