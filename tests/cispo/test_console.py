"""What a user reads on the console when a job fails or is interrupted: the real CLI as a subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interrupts import sigint_default

from cispo.checkpoint import TrainState, checkpoint_dir, write_state
from cispo.cli import failure, resume_hint
from cispo.config import Config
from cispo.tracking import UnreadableRecord

CISPO_TRAIN = Path(sys.executable).parent / "cispo-train"
USER_REWARDS = Path(__file__).parents[1] / "reward" / "user_rewards.py"
QUICK = ["trainer.sft_steps=0", "trainer.save_every=1", "logger.progress_bar=false", "task.eval_size=4"]


@pytest.mark.slow
def test_a_failed_job_says_the_cause_in_one_paragraph_and_keeps_the_traceback_in_the_log(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run([str(CISPO_TRAIN), *QUICK, f"trainer.output_dir={out}", "trainer.steps=2",
                          f"reward.fn={USER_REWARDS}:raising_reward", "reward.max_error_fraction=0"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    assert "error: RewardFunctionError: reward function" in res.stderr
    assert f"full traceback: {out / 'cli.log'}" in res.stderr and "No checkpoint was written." in res.stderr
    before, paragraph = res.stderr.split("error: RewardFunctionError")
    assert "Traceback (most recent call last)" not in before  # the traceback is in the log, not on the console
    assert "cannot score" in paragraph  # the user's function's own error (and its traceback) is the cause shown
    assert "ray/_private" not in paragraph and "cispo/job.py" not in paragraph  # not the job's or Ray's frames
    assert "\x1b[" not in res.stderr  # no colour codes
    assert "Traceback (most recent call last)" in (out / "cli.log").read_text()
    assert "Token authentication is enabled" not in res.stderr  # a local run keeps token auth, quietly


def test_an_actors_error_is_told_by_its_cause_and_the_call_it_came_from(ray_session):
    import ray

    class Worker:  # defined here, so Ray ships it by value (the workers cannot import this test module)
        def pid(self) -> int:
            import os

            return os.getpid()

        def step(self, plan):
            return plan % 2  # a list where an int was expected: a TypeError inside the actor

    worker = ray.remote(Worker).remote()
    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(worker.step.remote([1, 2]))
    assert isinstance(caught.value, TypeError)  # ray.get raises it as its cause's type too
    pid = ray.get(worker.pid.remote())
    assert failure(caught.value) == (f"TypeError (raised in Worker.step, process {pid}): "
                                     "unsupported operand type(s) for %: 'list' and 'int'")


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([str(CISPO_TRAIN), *QUICK, f"trainer.output_dir={out}", "trainer.steps=200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (out / "checkpoints").exists():
            time.sleep(0.5)
        assert (out / "checkpoints").exists(), "no checkpoint within 300 s"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted. Last checkpoint:" in stderr and "trainer.resume=true" in stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps and max(steps) < 200


def test_the_resume_hint_says_to_move_away_a_record_the_job_could_not_resume(tmp_path):
    cfg = Config()
    cfg.trainer.output_dir = str(tmp_path)
    assert resume_hint(cfg) == "No checkpoint was written."
    checkpoint = checkpoint_dir(tmp_path, 4)
    checkpoint.mkdir(parents=True)
    write_state(checkpoint, TrainState(step=4, version=4))
    assert resume_hint(cfg) == (f"Last checkpoint: {checkpoint} (step 4); continue with the same command plus "
                                "trainer.resume=true.")
    record = tmp_path / "metrics.jsonl"
    unreadable = UnreadableRecord(record, 2, ValueError("Expecting value"))
    assert resume_hint(cfg, unreadable) == (f"Last checkpoint: {checkpoint} (step 4); move {record} away, then "
                                            "continue with the same command plus trainer.resume=true.")
