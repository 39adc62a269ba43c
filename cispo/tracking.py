"""Weights & Biases and the console: one place that every entry point logs through.

W&B runs offline (files under `trainer.output_dir/wandb`) unless WANDB_API_KEY is
set; `logger.mode` forces a mode. Metric names are namespaced and stable:
rollout/, reward/, learner/, env/, perf/, eval/.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cispo.config import Config
from cispo.types import Sample


class UnreadableRecord(ValueError):
    """A line of a run's record that is not a JSON object with a step: no job can resume past it until
    the file is moved away (`path`)."""

    def __init__(self, path: Path, line: int, why: BaseException):
        super().__init__(f"{path}:{line}: not a JSON object with a step ({why}); the job cannot resume this "
                         "record: move it away, or start fresh")
        self.path = path


def keep_steps_through(path: Path, step: int | None) -> None:
    """Make a JSON-lines record of the run (each line an object with its "step") what a job starting
    now must find: a job resumed from step `step`'s checkpoint trains the steps after it again (from
    step 0's checkpoint too), so their earlier lines go and each step is there once; a fresh job
    (None) starts it empty. A last line without its newline is a write cut short by a killed job
    (the usual reason to resume): it goes too."""
    kept = []
    if step is not None and path.exists():
        lines = path.read_text().split("\n")[:-1]  # every line written to its end; a cut-short tail dropped
        for number, line in enumerate(lines, 1):
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError) as e:
                raise UnreadableRecord(path, number, e) from e
    path.write_text("".join(line + "\n" for line in kept))


def wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    def __init__(self, cfg: Config, total_steps: int, start_step: int):
        """`start_step`: RL steps already done."""
        self.cfg = cfg
        self.mode = wandb_mode(cfg.logger.mode)
        self.run = None
        if self.mode != "disabled":
            import wandb

            out = Path(cfg.trainer.output_dir).resolve()
            out.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(project=cfg.logger.project, dir=str(out), mode=self.mode,
                                  config=asdict(cfg), resume="allow", id=_run_id(out),
                                  settings=wandb.Settings(console="off", silent=True))
        # The same metrics as JSON lines, for scripts and tests that read a run without W&B (kept
        # through the resumed step by the job: one of its RUN_RECORDS).
        path = Path(cfg.trainer.output_dir) / "metrics.jsonl"
        self.metrics_file = open(path, "a")
        self._bar_args = dict(total=total_steps, initial=start_step, desc="RL", unit="step",
                              disable=not cfg.logger.progress_bar, dynamic_ncols=True)
        self.bar: tqdm | None = None  # drawn from the first RL step on, after the warm-up's own bar

    @property
    def location(self) -> str:
        if self.run is None:
            return "W&B disabled"
        return self.run.url if self.mode == "online" else str(Path(self.run.dir).parent)

    def log(self, step: int, metrics: dict[str, float], advance: bool = True) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)
        self.metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.metrics_file.flush()
        if not advance:
            return
        if self.bar is None:
            self.bar = tqdm(**self._bar_args)
        self.bar.update(1)
        self.bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}" for k in
                              ("reward/mean", "learner/loss", "perf/samples_per_s") if k in metrics})

    def log_static(self, metrics: dict[str, float]) -> None:
        """Figures of the whole run (the warm-up's), kept in the run summary."""
        if self.run is not None:
            self.run.summary.update(metrics)
        if metrics:
            tqdm.write(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    def log_samples(self, step: int, samples: list[Sample]) -> None:
        if self.run is None:
            return
        import wandb

        table = wandb.Table(columns=["step", "prompt", "response", "reward", "details", "finish", "error"])
        for s in samples[: self.cfg.logger.table_rows]:
            table.add_data(step, s.prompt_text, s.response_text, s.reward, json.dumps(s.reward_details, default=str),
                           s.finish_reason, s.reward_error or "")
        self.run.log({"samples": table}, step=step)

    def alert(self, title: str, text: str) -> None:
        tqdm.write(f"WARNING: {title}: {text}")
        if self.run is not None and self.mode == "online":
            self.run.alert(title=title, text=text)

    def close_bar(self) -> None:
        """Before the job's last lines, so the bar is not drawn again after them."""
        if self.bar is not None:
            self.bar.close()

    def finish(self) -> None:
        self.close_bar()
        self.metrics_file.close()
        if self.run is not None:
            self.run.finish()


def _run_id(output_dir: Path) -> str:
    """One W&B run per output dir, so a resumed job continues its run."""
    path = output_dir / "wandb_run_id"
    if not path.exists():
        path.write_text(uuid.uuid4().hex[:8])
    return path.read_text().strip()


def format_summary(values: dict[str, Any]) -> str:
    return "summary: " + " ".join(f"{k}={v}" for k, v in values.items())
