"""Reward functions that ship with the project.

Every reward function has the signature a user's plug-in has:
    fn(prompt: str, response: str, metadata: dict) -> float | {"score": float, ...}
"""

from __future__ import annotations


def addition_reward(prompt: str, response: str, metadata: dict) -> dict:
    """1.0 when the response is exactly the sum, else 0.0; `pass` mirrors it for pass-rate metrics."""
    correct = response.strip() == metadata["answer"]
    return {"score": float(correct), "pass": correct}
