"""A reward function of your own: 1 when the response's last number is the row's answer.

Load it by file path, no package needed:

    cispo-train task=dataset reward.fn=examples/my_reward.py:reward

The signature every reward has: fn(prompt, response, metadata) -> float | dict. `prompt` is
the row's prompt as text (the string itself; chat messages as the chat template rendered
them), `response` the decoded completion, and
`metadata` the dataset row's columns, with `task.answer_key`'s value as metadata["answer"].
A dict's "score" is the reward; its other keys are logged, and "pass" counts for pass@k.
"""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?\d+")


def reward(prompt, response: str, metadata: dict) -> dict:
    numbers = NUMBER.findall(response)
    correct = bool(numbers) and numbers[-1] == str(metadata["answer"]).strip()
    return {"score": float(correct), "pass": correct, "answered": float(bool(numbers))}
