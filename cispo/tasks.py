"""Build the task named by `task.name`."""

from __future__ import annotations

from cispo.config import TaskConfig


def make_task(cfg: TaskConfig):
    if cfg.name == "addition":
        from cispo.envs.addition import AdditionTask

        return AdditionTask(cfg.min_digits, cfg.max_digits, cfg.seed, cfg.eval_size)
    if cfg.name == "swe_synthetic":
        from cispo.envs.swe_task import SweTask

        return SweTask.synthetic(cfg.data_dir)
    raise ValueError(f"task.name={cfg.name!r} is unknown; known: addition, swe_synthetic")
