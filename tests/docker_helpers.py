"""Helpers for tests that use the real Docker daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from cispo.envs.docker_daemon import connect
from cispo.envs.sandbox import LABEL


def our_containers() -> list:
    """Containers labelled as sandboxes and owned by this test process (a job's sandbox pool runs in it)."""
    return connect().containers.list(all=True, filters={"label": [LABEL, f"{LABEL}.pid={os.getpid()}"]})


def restart_docker_daemon() -> None:
    """Stop dockerd, which stops every container with it, and start it again as `make test` did."""
    pid = int(subprocess.check_output(["pgrep", "-xo", "dockerd"]))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "dockerd did not stop within 90 s"
        time.sleep(0.2)
    subprocess.run([str(Path(__file__).resolve().parents[1] / "scripts/docker_daemon.sh")], check=True)
