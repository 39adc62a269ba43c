"""Run a training job under supervision: a learner that dies costs the steps since the last checkpoint.

When a learner rank's actor dies mid-run (`LearnerDiedError`), the job is torn down
(every actor of it stopped) and started again from its last complete checkpoint, as
`trainer.resume=auto` does: same step, optimizer state and data position, and the
steps after the checkpoint trained again (their record in trained_samples.jsonl is
rewritten). Up to `trainer.max_restarts` times; each restart is printed and counted
(`faults/learner_restarts`). Engines and reward workers that die are replaced in
place by their groups and do not restart the job.
"""

from __future__ import annotations

import dataclasses
import sys

from cispo.config import Config
from cispo.learner.group import LearnerDiedError


def run_job(cfg: Config) -> dict:
    """Train with the driver `trainer.max_staleness` selects; the run's key figures."""
    if cfg.trainer.max_staleness > 0:
        from cispo.train_async import train_async as driver
    else:
        from cispo.train import train as driver
    restarts = 0
    while True:
        try:
            return driver(cfg, learner_restarts=restarts)
        except LearnerDiedError as e:
            if restarts >= cfg.trainer.max_restarts:
                raise
            restarts += 1
            print(f"learner died ({e}); restarting the job from its last checkpoint "
                  f"(restart {restarts} of trainer.max_restarts={cfg.trainer.max_restarts})", file=sys.stderr, flush=True)
            cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, resume="auto"))
