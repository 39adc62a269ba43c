"""Reward functions a user might write, well-behaved and not (loaded by path in the tests)."""

import asyncio
import math
import os
import time


def length_reward(prompt, response, metadata):
    return float(len(response))


def detailed_reward(prompt, response, metadata):
    return {"score": 0.5, "note": metadata.get("note", "")}


async def async_reward(prompt, response, metadata):
    await asyncio.sleep(0.01)
    return 1.0


def raising_reward(prompt, response, metadata):
    raise ValueError(f"cannot score {response!r}")


def nan_reward(prompt, response, metadata):
    return math.nan


def sometimes_nan_reward(prompt, response, metadata):
    """The addition reward with an extra field, NaN for every third prompt (by its first operand)."""
    if int(prompt.split("+")[0]) % 3 == 0:
        return math.nan
    return {"score": float(response.strip() == metadata["answer"]), "len": len(response)}


def none_reward(prompt, response, metadata):
    return None


def hanging_reward(prompt, response, metadata):
    if response == "hang":
        time.sleep(3600)
    return 1.0


async def hanging_async_reward(prompt, response, metadata):
    await asyncio.sleep(3600)


def slow_reward(prompt, response, metadata):
    time.sleep(0.3)
    return 1.0


def paced_addition_reward(prompt, response, metadata):
    """The addition reward, 20 ms per sample: slow enough that a test can kill a worker while it scores."""
    time.sleep(0.02)
    return float(response.strip() == metadata["answer"])


def process_exit_reward(prompt, response, metadata):
    """Ends its worker's process, as a crashing C extension would."""
    os._exit(1)


def batch_reward(prompts, responses, metadatas):
    return [float(r == m["answer"]) for r, m in zip(responses, metadatas)]


NOT_A_FUNCTION = 3


def counted_raising_reward(prompt, response, metadata):
    """Raises, after noting the call in metadata["calls_file"]."""
    with open(metadata["calls_file"], "a") as f:
        f.write("call\n")
    raise ValueError("cannot score")


def gil_holding_reward(prompt, response, metadata):
    """Never returns and never lets another thread run: a catastrophic regex in C holds the GIL."""
    import re

    re.fullmatch(r"(a+)+b", "a" * 64)
