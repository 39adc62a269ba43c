"""The Task Protocol's contract, run on every registered task and on a user's own, loaded by path."""

from __future__ import annotations

import pytest

from cispo.config import TaskConfig
from cispo.envs.task import Task, TaskLoadError, TaskRow, make_task, task_names

USER_TASK = '''
from cispo.envs.addition import AdditionTask
from cispo.envs.task import TaskRow


class Countdown:
    """A user's task: its own key comes in task.args."""

    name = "countdown"

    def __init__(self, cfg):
        self.start = cfg.args["start"]

    def row(self, index):
        n = self.start + index % 7
        return TaskRow(f"{n}-1=", {"answer": str(n - 1)})

    def eval_rows(self):
        return [self.row(i) for i in range(3)]

    def reference_pair(self, index):
        row = self.row(index)
        return row.prompt, row.metadata["answer"]

    build_tokenizer = staticmethod(AdditionTask.build_tokenizer)
'''


def check_contract(task, tokenizer_needed: bool = True) -> None:
    """What a job relies on: rows are a pure function of the index, eval rows are fixed,
    reference pairs exist, and the tokenizer encodes the prompts."""
    assert isinstance(task, Task) and isinstance(task.name, str)
    rows = [task.row(i) for i in range(5)]
    assert rows == [task.row(i) for i in range(5)]  # resume is exact only if row i never changes
    for row in rows + task.eval_rows():
        assert isinstance(row, TaskRow) and row.prompt and isinstance(row.metadata, dict)
    assert task.eval_rows() == task.eval_rows() and task.eval_rows()
    prompt, answer = task.reference_pair(0)
    assert prompt and isinstance(answer, str) and answer
    if tokenizer_needed:
        from cispo.envs.chat import PromptEncoder

        tokenizer = task.build_tokenizer()
        assert PromptEncoder(tokenizer).encode(rows[0].prompt) and tokenizer.eos_token_id is not None


@pytest.mark.parametrize("name", task_names())
def test_every_registered_task_meets_the_contract(name, tmp_path):
    cfg = TaskConfig(name=name, data_dir=str(tmp_path / "swe"))
    if name in ("dataset", "math"):  # a dataset task needs a file: the example the project ships
        from pathlib import Path

        cfg.path = str(Path(__file__).parents[2] / "examples" / "arith.jsonl")
    if name == "swe":  # a user's SWE tasks file: the synthetic set's (validated in test_task_validation.py)
        from cispo.envs.swe_synthetic import generate

        cfg.path, cfg.flagged_tasks = str(generate(tmp_path / "tasks")), "keep"
    if name == "swe_edit":  # few tasks: each eval row renders its single-shot prompt from the repo
        cfg.eval_size, cfg.train_size = 4, 24
    task = make_task(cfg)
    check_contract(task)
    if name == "swe_edit":
        assert (len(task), len(task.eval_rows())) == (24, 4)


def test_a_users_task_loads_by_file_path(tmp_path):
    path = tmp_path / "my_tasks.py"
    path.write_text(USER_TASK)
    task = make_task(TaskConfig(name=f"{path}:Countdown", args={"start": 10}))
    check_contract(task)
    assert task.row(0) == TaskRow("10-1=", {"answer": "9"})


@pytest.mark.parametrize("name, message", [
    ("nosuchtask", "is unknown; built-in: .*addition"),
    ("/nonexistent/tasks.py:MyTask", "no file"),
    ("cispo.envs.addition:NoSuchClass", "has no 'NoSuchClass'"),
    ("cispo.envs.task:TaskRow", "lacks"),  # builds, but is no Task
])
def test_a_bad_task_name_says_what_is_wrong(name, message):
    with pytest.raises((TaskLoadError, TypeError), match=message):
        make_task(TaskConfig(name=name))
