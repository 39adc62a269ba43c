"""The job's staged length curriculum: rollout.max_new_tokens rises through algo.curriculum_caps.

`cispo.algo.controls.LengthCurriculum` decides when; this wires it to a job: the stage and its
plateau window live in the job's `TrainState` (so a resumed job continues them), and the
cap is written to `cfg.rollout.max_new_tokens`, which the samplers, the overlong shaping
and Dr.GRPO's constant all read.
"""

from __future__ import annotations

from cispo.checkpoint import TrainState
from cispo.config import Config
from cispo.algo.controls import LengthCurriculum


class JobCurriculum:
    def __init__(self, cfg: Config, state: TrainState):
        a = cfg.algo
        self.cfg, self.state = cfg, state
        self.schedule = (LengthCurriculum(a.curriculum_caps, near_cap=a.curriculum_near_cap,
                                          window=a.curriculum_window, min_delta=a.curriculum_min_delta)
                         if a.curriculum_caps else None)
        if self.schedule is not None:
            if state.curriculum:
                self.schedule.load_state_dict(state.curriculum)
            cfg.rollout.max_new_tokens = self.schedule.cap

    def step(self, metrics: dict[str, float]) -> dict[str, float]:
        """After a step: feed its p99 response length and metric; the cap of the next step, logged."""
        raised = False
        if self.schedule is not None:
            name = self.cfg.algo.curriculum_metric
            if name not in metrics:
                raise KeyError(f"algo.curriculum_metric {name!r} is not a per-step metric; "
                               f"known: {', '.join(sorted(metrics))}")
            raised = self.schedule.update(metrics["rollout/response_len_p99"], metrics[name])
            self.cfg.rollout.max_new_tokens = self.schedule.cap
            self.state.curriculum = self.schedule.state_dict()
        return {"rollout/max_new_tokens": float(self.cfg.rollout.max_new_tokens),
                "rollout/curriculum_raised": float(raised)}
