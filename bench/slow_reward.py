"""A reward function with a configured latency, for benchmarks where scoring costs as much as generation.

`delayed_addition_reward` sleeps BENCH_REWARD_DELAY_S seconds (read in the reward
worker's process, so pass it through Ray's runtime_env) and then scores like the
built-in `addition_reward`: it stands for a verifier that waits on something
(a sandbox, a remote judge) rather than computing.
"""

from __future__ import annotations

import os
import time

from cispo.reward.builtin import addition_reward


def delayed_addition_reward(prompt: str, response: str, metadata: dict) -> dict:
    time.sleep(float(os.environ.get("BENCH_REWARD_DELAY_S", "0")))
    return addition_reward(prompt, response, metadata)
