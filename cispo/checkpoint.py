"""Checkpoint layout and the trainer state that makes resume exact.

    output_dir/checkpoints/step_000020/
        hf/                  HF model + tokenizer: loads in transformers and vLLM
        trainer_state.json   step, policy version, data position, length curriculum
    output_dir/checkpoints/deepspeed/step_000020/   DeepSpeed weights + optimizer, per rank
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class TrainState:
    step: int = 0  # RL steps done
    version: int = 0  # policy version the engines sample with (= RL steps done)
    next_prompt: int = 0  # every training prompt of the task's stream below this index is consumed
    consumed_above: list[int] = field(default_factory=list)  # and these above it (consumption is out of order)
    curriculum: dict = field(default_factory=dict)  # the length curriculum's stage and metric history


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:06d}"


def deepspeed_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints" / "deepspeed"


def tag(step: int) -> str:
    return f"step_{step:06d}"


def write_state(directory: Path, state: TrainState) -> None:
    """Written last: a checkpoint without it is incomplete and is never resumed from."""
    tmp = directory / "trainer_state.json.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.rename(directory / "trainer_state.json")


def latest_checkpoint(output_dir: str | Path) -> tuple[Path, TrainState] | None:
    """The newest complete checkpoint under output_dir, or None."""
    root = Path(output_dir) / "checkpoints"
    complete = sorted(p for p in root.glob("step_*") if (p / "trainer_state.json").exists()) if root.exists() else []
    if not complete:
        return None
    state = TrainState(**json.loads((complete[-1] / "trainer_state.json").read_text()))
    return complete[-1], state
