"""The `Task` Protocol and its registry: where a job's prompts come from.

A task is a stream of rows. Row i of the training stream is a pure function of the
task's config and i (so resume is exact), the held-out rows are fixed, and reference
answers feed the supervised warm-up. Built-in tasks register by name; a user's own
loads by `package.module:Class` or `/path/to/file.py:Class`, as a reward function does:

    task.name=my_pkg.my_tasks:MyTask

A task is built from the `task` config section: `factory(cfg)`, where `cfg` has the
fields of `cispo.config.TaskConfig` (`cfg.args` is an open dict for a user's own keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from cispo.reward.loader import load_object

# A chat prompt: OpenAI-style messages, [{"role": "user", "content": "..."}, ...].
Messages = list[dict[str, str]]

# A warm-up answer: the text the policy should write, or an agent episode as its turns in order,
# the policy's and the tools' alternating, the policy's first: ["call", "observation", "call", ...].
# The warm-up trains on the policy's turns only; an observation is context, as in an RL episode.
ReferenceAnswer = str | list[str]


@dataclass(frozen=True)
class TaskRow:
    """One prompt and what its reward function needs to score a response to it."""

    prompt: str | Messages  # plain text, or chat messages rendered by the tokenizer's chat template
    metadata: dict[str, Any] = field(default_factory=dict)  # reaches the reward function unchanged


@runtime_checkable
class Task(Protocol):
    """What a job asks of a task. `build_tokenizer` is used only when the job creates a random-init
    policy (no `model.path`); a task for pretrained checkpoints may raise there, saying so."""

    name: str

    def row(self, index: int) -> TaskRow:
        """Training row number `index` (0, 1, 2, ...): a pure function of the config and `index`."""

    def eval_rows(self) -> list[TaskRow]:
        """The held-out rows, the same on every call."""

    def reference_pair(self, index: int) -> tuple[str | Messages, ReferenceAnswer]:
        """(prompt, reference answer) number `index`, for the supervised warm-up."""

    def build_tokenizer(self):
        """A tokenizer for a policy this task's job creates from scratch."""


TaskFactory = Callable[[Any], Task]
_TASKS: dict[str, TaskFactory] = {}


class TaskLoadError(ValueError):
    pass


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Register `factory(cfg) -> Task` as built-in task `name`; a name may be registered once."""

    def decorator(factory: TaskFactory) -> TaskFactory:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered (by {_TASKS[name].__qualname__})")
        _TASKS[name] = factory
        return factory

    return decorator


def task_names() -> list[str]:
    _register_builtins()
    return sorted(_TASKS)


def make_task(cfg: Any) -> Task:
    """The task `cfg.name` names: a registered name or a dotted / file path to a factory."""
    _register_builtins()
    name = cfg.name
    if name in _TASKS:
        factory = _TASKS[name]
    elif ":" in name:
        try:
            factory = load_object(name, key="task.name")
        except ValueError as e:
            raise TaskLoadError(str(e)) from e
    else:
        raise TaskLoadError(f"task.name={name!r} is unknown; built-in: {', '.join(sorted(_TASKS))}, "
                            "or 'package.module:Class' / '/path/to/file.py:Class' for your own")
    task = factory(cfg)
    missing = [m for m in ("name", "row", "eval_rows", "reference_pair", "build_tokenizer") if not hasattr(task, m)]
    if missing:
        raise TaskLoadError(f"task.name={name!r}: {type(task).__name__} lacks {missing} of the Task Protocol "
                            "(cispo.envs.task.Task)")
    return task


def _register_builtins() -> None:
    """Import the modules whose tasks register themselves (once; imports are cached)."""
    import cispo.envs.addition  # noqa: F401
    import cispo.envs.dataset  # noqa: F401
    import cispo.envs.swe_edit_tasks  # noqa: F401
    import cispo.envs.swe_task  # noqa: F401
