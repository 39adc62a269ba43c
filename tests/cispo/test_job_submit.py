"""`ray job submit` of a training job to a running Ray head, as the README shows it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))
CISPO_TRAIN = str(Path(sys.executable).with_name("cispo-train"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A separate Ray head (its own ports and temp dir), stopped afterwards.

    Not `ray stop`: that kills every Ray process on the machine, including the
    test session's own cluster (and with its raylet, the pytest process itself).
    `ray start --block` in its own session is killed with its group, and anything left
    that names this head's temp dir after it."""
    port, dashboard = free_port(), free_port()
    # Every fixed default port gets a free one: the test session's own Ray already holds them.
    own_ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port")]
    temp_dir = Path("/tmp") / f"ray-head-{port}"  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}",
         "--dashboard-host=127.0.0.1", "--num-cpus=4", f"--temp-dir={temp_dir}", "--include-dashboard=true",
         *own_ports],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while not _answers(f"{url}/api/version"):
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(1)
        yield url
    finally:  # SIGKILL: a graceful stop of the head takes ~30 s and nothing of it is kept
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        subprocess.run(["pkill", "-KILL", "-f", str(temp_dir)], check=False)


def submit_when_ready(client, deadline_s: float = 120, **job) -> str:
    """Submit once the head's dashboard agent is up (it answers 500 "no available agent" before)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered (401 without the auth token)
    except OSError:
        return False


@pytest.mark.slow
def test_submitted_job_succeeds(ray_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    # Ray >= 2.59 turns on token authentication for local clusters and keeps the token in
    # ~/.ray/auth_token; `ray job submit` on this machine finds it there, the SDK client is handed it.
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    dashboard_url = ray_head
    client = JobSubmissionClient(dashboard_url, headers={"Authorization": f"Bearer {token}"})
    out = tmp_path / "submitted"
    job_id = submit_when_ready(
        client,
        entrypoint=f"{CISPO_TRAIN} ray.address=auto trainer.steps=2 trainer.sft_steps=2 trainer.save_every=0 "
                   f"rollout.prompts_per_step=4 algo.group_size=4 task.eval_size=8 logger.progress_bar=false "
                   f"trainer.output_dir={out}",
        runtime_env={"env_vars": {"WANDB_MODE": "offline"}},
    )
    deadline = time.monotonic() + 600
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "summary: steps=2 " in logs
    assert (out / "checkpoints" / "step_000002" / "hf" / "config.json").exists()
