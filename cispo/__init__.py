"""cispo: distributed RL post-training (CISPO) on Ray, vLLM, DeepSpeed and Docker.

Kept light on purpose: importing `cispo.model` must not pull in Ray or DeepSpeed.
"""

__version__ = "0.1.0"
