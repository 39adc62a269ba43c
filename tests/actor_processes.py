"""Find and SIGKILL the process of a Ray actor while it runs a given method: real fault injection.

A Ray worker names its process `ray::Class.method` while it runs that method and
`ray::Class` while idle. Only the processes under the given raylets are searched,
so other Ray clusters on the same machine are never touched.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import psutil


def raylet_pids(nodes=None) -> list[int]:
    """The raylet process of each of `nodes` (ray._private.node.Node), default: this process's Ray node."""
    import ray
    from ray._private import ray_constants

    nodes = nodes if nodes is not None else [ray._private.worker._global_node]
    return [n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid for n in nodes]


def actor_processes(raylets: list[int], title: str) -> list[psutil.Process]:
    """Worker processes under `raylets` whose title is `ray::<title>` or starts with it (e.g. "Learner").
    A process one of them forked (vLLM's engine core, until it renames itself) carries the same title
    for a moment and is left out: it is not an actor."""
    return [p for raylet in raylets for p in psutil.Process(raylet).children(recursive=True)
            if _titled(p, title) and not _titled(p.parent(), title)]


def _titled(process: psutil.Process | None, title: str) -> bool:
    try:
        cmd = process.cmdline() if process is not None else []
    except psutil.Error:
        return False
    return bool(cmd) and cmd[0].startswith(f"ray::{title}")


def kill_while_running(raylets: list[int], title: str, when: Callable[[], bool] = lambda: True,
                       timeout_s: float = 300.0, stop: threading.Event | None = None) -> int | None:
    """Once `when()` holds, SIGKILL the first process seen running `title` ("Class.method", or
    "Class" for the actor whatever it runs); its pid, or None when none ran within timeout_s of
    `when()` holding, or `stop` was set first."""
    stop = stop or threading.Event()
    while not when():
        if stop.wait(0.05):
            return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        running = actor_processes(raylets, title)
        if running:
            os.kill(running[0].pid, signal.SIGKILL)
            return running[0].pid
        time.sleep(0.02)
    return None


class Killer(threading.Thread):
    """In the background, kill the actor process running `title` once `when()` holds; `pid` says
    which process (None: none ran in time). Use it as a context manager around the run: on exit it
    stops looking, so it never kills an actor of a later test."""

    def __init__(self, raylets: list[int], title: str, when: Callable[[], bool] = lambda: True,
                 timeout_s: float = 300.0):
        super().__init__(daemon=True, name=f"kill-{title}")
        self.raylets, self.title, self.when, self.timeout_s = raylets, title, when, timeout_s
        self.pid: int | None = None
        self._cancelled = threading.Event()

    def run(self) -> None:
        self.pid = kill_while_running(self.raylets, self.title, self.when, self.timeout_s, self._cancelled)

    def __enter__(self) -> "Killer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._cancelled.set()
        self.join()


def steps_logged(output_dir) -> int:
    """RL steps a job has logged to output_dir/metrics.jsonl so far."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"reward/mean"' in line for line in path.read_text().splitlines())
