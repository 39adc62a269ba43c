"""`cispo-train`: the Hydra entry point. `cispo-train --help` shows every key with its comment;
`cispo-train --cfg job` prints the resolved config."""

from __future__ import annotations

import re
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from cispo.config import Config, ConfigError, unknown_keys, validate

ConfigStore.instance().store(name="config_schema", node=Config)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def check_resume(cfg: Config) -> None:
    """What trainer.resume finds in output_dir, said before Ray starts."""
    from cispo.checkpoint import latest_checkpoint

    if cfg.trainer.resume == "false":
        return
    found = latest_checkpoint(cfg.trainer.output_dir)
    if found is None:
        if cfg.trainer.resume == "true":
            raise ConfigError(f"trainer.resume=true: no complete checkpoint in {cfg.trainer.output_dir}; use "
                              "trainer.resume=auto to start fresh when there is none")
        print(f"trainer.resume=auto: no checkpoint in {cfg.trainer.output_dir}; starting fresh", file=sys.stderr)
    elif found[1].step >= cfg.trainer.steps:
        raise ConfigError(f"trainer.steps={cfg.trainer.steps}: the checkpoint to resume ({found[0]}) is at step "
                          f"{found[1].step} already; raise trainer.steps past it to train on")


@hydra.main(version_base="1.3", config_path="pkg://cispo.conf", config_name="config")
def _main(dict_cfg: DictConfig) -> None:
    try:
        unknown = unknown_keys(OmegaConf.to_container(dict_cfg, resolve=False))
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: no such key (a '+' adds a key past the schema; only the "
                              "open dicts rollout.resources, learner.resources and task.args take new keys)")
        cfg = validate(OmegaConf.to_object(dict_cfg))
        check_resume(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    # Imported after validation: a bad config fails before Ray starts.
    from cispo.supervise import run_job

    try:
        run_job(cfg)
    except KeyboardInterrupt:
        print(f"\ninterrupted. {resume_hint(cfg)}", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - every failure ends here: one clean paragraph, the traceback in the log
        with open(Path(cfg.trainer.output_dir) / "cli.log", "a") as job_log:  # the job's log, not the console
            traceback.print_exc(file=job_log)
        print(f"\nerror: {failure(e)}\nfull traceback: {Path(cfg.trainer.output_dir) / 'cli.log'}\n"
              f"{resume_hint(cfg, e)}", file=sys.stderr)
        sys.exit(1)


def failure(error: BaseException) -> str:
    """An error as a person reads it: the underlying cause of a Ray actor's error, where it was raised,
    without Ray's chained tracebacks and colour codes."""
    import ray.exceptions

    where = ""
    if isinstance(error, ray.exceptions.RayTaskError):
        # ray.get raises it as a subclass of the cause's type that keeps only the cause and the message,
        # whose first line names the task: "ray::Learner.train_step() (pid=123, ip=...)".
        task = re.search(r"ray::([\w.]+)\(\) \(pid=(\d+)", ANSI.sub("", str(error)))
        if task:
            where = f" (raised in {task[1]}, process {task[2]})"
        error = error.cause
    text = ANSI.sub("", str(error)).strip()
    if isinstance(error, ray.exceptions.RayActorError):
        text = text.splitlines()[0] if text else "an actor died"
    return f"{type(error).__name__}{where}: {text}"


def resume_hint(cfg: Config, error: BaseException | None = None) -> str:
    """How to go on from the last checkpoint; first, when `error` is a record the job could not
    resume, moving that file away (resuming again would fail the same way)."""
    from cispo.checkpoint import latest_checkpoint
    from cispo.tracking import UnreadableRecord

    found = latest_checkpoint(cfg.trainer.output_dir)
    if found is None:
        return "No checkpoint was written."
    first = f"move {error.path} away, then " if isinstance(error, UnreadableRecord) else ""
    return (f"Last checkpoint: {found[0]} (step {found[1].step}); {first}continue with the same command plus "
            "trainer.resume=true.")


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["report"]:  # `cispo-train report OUTPUT_DIR ...`: a run's report.html, no job
        from cispo.report import main as report_main

        sys.exit(report_main(args[1:]))
    if "--help" in args or "-h" in args:  # Hydra's own help lists the keys without a word about them
        from cispo.config_help import help_text

        print(help_text([a for a in args if a not in ("--help", "-h")]), end="")
        return
    _main()


if __name__ == "__main__":
    main()
