"""Two simulated Ray nodes: the learner placed on one, the rollout engine on the other, by custom
resources (learner.resources / rollout.resources); the engine killed mid-generation is replaced
on its own node and the job finishes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(__file__).with_name("multinode_job.py")


@pytest.mark.slow
def test_learner_and_engine_on_their_nodes_and_a_killed_engine_recovers(tmp_path):
    # The cluster's own temp dir (short: Ray's socket paths are limited) keeps it apart from any other Ray here.
    ray_tmp = Path("/tmp") / f"rmn-{os.getpid()}"
    ray_tmp.mkdir(exist_ok=True)
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "offline"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "run")], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)  # ~2 min alone; much longer on a busy machine
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in psutil.process_iter(["cmdline"]):  # anything of this cluster still running, by its temp dir
            if any(str(ray_tmp) in arg for arg in p.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    p.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, stderr[-4000:]
    seen = json.loads(stdout.strip().splitlines()[-1])

    assert seen["steps"] == 3
    assert seen["Learner@learner_node"] and not seen["Learner@rollout_node"]
    assert not seen["VLLMWorker@learner_node"]
    assert seen["killed_engine_pid"] in seen["VLLMWorker@rollout_node"]
    assert len(seen["VLLMWorker@rollout_node"]) == 2  # the killed engine and its replacement, on the same node
    assert seen["rollout_restarts"] == 1
