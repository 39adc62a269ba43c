"""Where the learner ranks meet: rank 0's address and a free port on its node.

A module of its own, importing nothing heavy: Ray runs `free_port` as a task on rank 0's
node before any rank exists, and a task imports the module that defines its function.
Defined beside the ranks, it made that task import DeepSpeed (~8 s) on the job's
critical path, with the ranks' own imports still to come."""

from __future__ import annotations

import socket

import ray


def free_port() -> tuple[str, int]:
    """An address and a free port on the node this runs on (the rank-0 rendezvous)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]
