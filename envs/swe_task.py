"""SWE tasks as an RL task (`task=swe task.path=tasks.jsonl`, `task=swe_synthetic`): issue in, diff out,
tests in Docker decide.

`SWETask` serves the rows of a SWE-bench-shaped tasks.jsonl to the job through the
same interface as `AdditionTask`: `row(i)`, `eval_rows()`, `reference_pair(i)` and
`build_tokenizer()`. The prompt is `render_patch_prompt(task)`; the metadata is the
task row plus `task_dir`, which is what `cispo.envs.swe:patch_reward` needs to find
the repository and grade the answer.

The synthetic set is generated at run time (nothing is downloaded): `generate` is
deterministic (fixed git identity and dates), so each version of the set is written
once into `<directory>/<hash of its tasks.jsonl>/` and reused; a job never rewrites
a bundle that another job's reward workers may be reading.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Collection

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from cispo.envs.swe import render_patch_prompt
from cispo.envs.swe_synthetic import generate
from cispo.envs.task import TaskRow, register_task
from cispo.envs.swe_instances import SWEInstance, TaskError, load_instances
from cispo.envs.task_validation import flagged_tasks

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>"]
# Where a job keeps the validation of a user's task file (task.flagged_tasks), per file digest.
TASK_CHECKS_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cispo" / "task_checks"


class SWETask:
    """The tasks of one tasks.jsonl, cycled in file order for training, and those of a held-out file (or
    the same ones) served once for eval."""

    def __init__(self, tasks_path: str | Path, name: str = "swe", exclude: Collection[str] = (),
                 held_out_path: str | Path | None = None):
        """`exclude`: instance ids left out (tasks that failed validation); `held_out_path`: a tasks.jsonl
        of the held-out tasks (None: eval is on the training tasks)."""
        self.name = name
        self.tasks_path = Path(tasks_path).resolve()
        self._instances: dict[str, SWEInstance] = {}
        self._train = self._load(self.tasks_path, exclude)
        if not self._train:
            raise TaskError(f"{self.tasks_path}: no task left to train on (every task excluded)")
        self._held_out = self._train if held_out_path is None else self._load(Path(held_out_path).resolve(), exclude)
        self._prompts: dict[str, str] = {}  # single-shot prompts, rendered on first use (each reads its repo)

    def _load(self, path: Path, exclude: Collection[str]) -> list[dict]:
        """The metadata (the raw row + task_dir) of one file's validated tasks not in `exclude`."""
        tasks = load_instances(path)  # validates every row, naming file, line and field
        raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = [(t, r) for t, r in zip(tasks, raw) if t.instance_id not in exclude]
        self._instances.update({t.instance_id: t for t, _ in kept})
        return [{**r, "task_dir": str(path.parent)} for _, r in kept]

    @classmethod
    def synthetic(cls, directory: str | Path) -> "SWETask":
        """The shipped synthetic set, generated under `directory` unless that version is already there."""
        root = Path(directory).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".generating-", dir=root))
        try:
            final = root / hashlib.sha256(generate(tmp).read_bytes()).hexdigest()[:12]
            publish_generated(tmp, final, "tasks.jsonl")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(final / "tasks.jsonl", name="swe_synthetic")

    def instances(self) -> list[SWEInstance]:
        return list(self._instances.values())

    def instance(self, instance_id: str) -> SWEInstance:
        """The validated task a row's metadata names."""
        return self._instances[instance_id]

    def __len__(self) -> int:
        return len(self._train)

    def metadata(self, index: int) -> dict:
        """Training row `index`'s metadata: the tasks in file order, over and over."""
        return self._train[index % len(self._train)]

    def held_out_metadata(self) -> list[dict]:
        """The held-out tasks' metadata; without a held-out file (the synthetic set), the training tasks'."""
        return list(self._held_out)

    def _row(self, metadata: dict) -> TaskRow:
        iid = metadata["instance_id"]
        if iid not in self._prompts:
            self._prompts[iid] = render_patch_prompt(self._instances[iid])
        return TaskRow(self._prompts[iid], metadata)

    def row(self, index: int) -> TaskRow:
        """Training prompt number `index`."""
        return self._row(self.metadata(index))

    def eval_rows(self) -> list[TaskRow]:
        """Every held-out task once."""
        return [self._row(m) for m in self._held_out]

    def reference_pair(self, index: int) -> tuple[str, str]:
        """(prompt, gold patch in the ```diff block `patch_reward` parses), for the supervised warm-up."""
        row = self.row(index)
        return row.prompt, f"```diff\n{self.instance(row.metadata['instance_id']).patch}```"

    @staticmethod
    def build_tokenizer() -> PreTrainedTokenizerFast:
        """One token per byte (256 + `<pad>`, `<bos>`, `<eos>`), so any code or diff round-trips
        exactly; `<bos>` is prepended to every encoded text."""
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 printable stand-ins for bytes
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
        # BPE without merges over the byte alphabet: every byte is its own token, nothing is unknown.
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
            clean_up_tokenization_spaces=False,  # spaces before punctuation are code, not noise
        )


def publish_generated(tmp: Path, final: Path, marker: str) -> None:
    """Move the set generated in `tmp` to `final` in one rename: a concurrent job sees all of it or none.
    When `final` already holds a complete set (its `marker` file exists), that one is kept."""
    if (final / marker).exists():
        return
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / marker).exists():
            raise


@register_task("swe")
def swe_task(cfg) -> SWETask:
    """A user's SWE-bench-shaped tasks.jsonl (`task.path`): repositories by repo_path (a git bundle or
    directory, relative to the file) or by image."""
    if not cfg.path:
        raise ValueError("task=swe needs task.path: a tasks.jsonl with SWE-bench fields (see `cispo-env score`)")
    task = SWETask(cfg.path)
    if cfg.flagged_tasks == "keep":
        return task
    flagged = flagged_tasks(task.tasks_path, task.instances(), TASK_CHECKS_CACHE)
    if flagged and cfg.flagged_tasks == "refuse":
        shown = "; ".join(f"{iid}: {problem}" for iid, problem in list(flagged.items())[:5])
        raise TaskError(f"task.flagged_tasks=refuse: {len(flagged)} of {len(task)} tasks in {task.tasks_path} "
                        f"failed validation (`cispo-env validate --tasks` shows every check): {shown}. Fix them, or "
                        "set task.flagged_tasks=drop to train without them")
    return SWETask(cfg.path, exclude=flagged) if flagged else task


@register_task("swe_synthetic")
def swe_synthetic_task(cfg) -> SWETask:
    return SWETask.synthetic(cfg.data_dir)
