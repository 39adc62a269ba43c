"""Prompt encoding: a task's prompt (text or chat messages) to the token ids the policy sees.

A chat prompt is rendered by a chat template (the tokenizer's own, or a .jinja file from
`task.chat_template`) with `add_generation_prompt=True`, and the ids the template's
tokenisation produced are the ids returned: decoding them and tokenising the text again
can merge or split tokens at the template's boundaries, so it is never done. A plain-string
prompt becomes one user message (after `task.system_prompt`) when there is a template, and
is tokenised as it is when there is none.

A prompt that leaves no room for the response is dropped or refused by `OverlongPrompts`
(`task.overlong_prompt`). Dropping is the controller's business, not the task's: row i stays
a pure function of (config, i), and the rollout source consumes a dropped row's index
unsampled (counted), so a resumed job skips exactly the same rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cispo.envs.task import Messages, ReferenceAnswer, Task, TaskRow

log = logging.getLogger(__name__)



class PromptError(ValueError):
    """A prompt that cannot be encoded: wrong shape, no template for messages, or a template that fails."""


def clip(value: Any, limit: int = 200) -> str:
    """`value`'s repr, shortened for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def as_prompt(value: Any) -> str | Messages:
    """`value` checked as a prompt: a non-empty string, or a non-empty list of {"role", "content"}
    string dicts. Keys a message holds beyond those two are kept unless None: Arrow gives every
    message of a column the union of all messages' keys, filling the absent ones with None."""
    if isinstance(value, str):
        if not value.strip():
            raise PromptError("the prompt is empty")
        return value
    if not isinstance(value, list):
        raise PromptError(f"the prompt is neither a string nor a list of chat messages: {type(value).__name__} "
                          f"{clip(value)}")
    if not value:
        raise PromptError("the prompt is an empty list of chat messages")
    messages = []
    for j, message in enumerate(value):
        if not isinstance(message, dict):
            raise PromptError(f"message {j} is {type(message).__name__}, not a {{'role', 'content'}} dict: "
                              f"{clip(message)}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise PromptError(f"message {j} needs a string {key!r}, got {clip(message.get(key))} in "
                                  f"{clip(message)}")
        if not message["role"]:
            raise PromptError(f"message {j} has an empty 'role': {clip(message)}")
        messages.append({k: v for k, v in message.items() if v is not None})
    return messages


class PromptEncoder:
    """Token ids of prompts (and of warm-up answers) for one tokenizer and the task's chat settings."""

    def __init__(self, tokenizer, chat_template: str = "auto", system_prompt: str | None = None,
                 tools: list[dict] | None = None):
        """`chat_template`: "auto" (the tokenizer's own when it has one), "none" (plain text), or the
        path of a Jinja file; `system_prompt` goes before every plain-string prompt; `tools` (function
        schemas) are declared through the template with every prompt (an agent's tools)."""
        self.tokenizer, self.system_prompt, self.mode, self.tools = tokenizer, system_prompt, chat_template, tools
        self.template: str | None = None  # a .jinja file's text; None: the tokenizer's own (if any)
        self.template_name = "the tokenizer's chat template"
        if chat_template == "auto":
            self.uses_template = tokenizer.chat_template is not None
        elif chat_template == "none":
            self.uses_template = False
        else:
            path = Path(chat_template).expanduser()
            if not path.is_file():
                raise PromptError(f"task.chat_template={chat_template!r}: no such file ({path.resolve()}); "
                                  "use auto, none, or the path of a .jinja chat template")
            self.template, self.uses_template = path.read_text(encoding="utf-8"), True
            self.template_name = f"chat template {path}"
        if system_prompt is not None and not self.uses_template:
            raise PromptError(f"task.system_prompt is set but {self._no_template()}: set task.chat_template to a "
                              ".jinja file (or auto with a model.path whose tokenizer has one)")

    def _no_template(self) -> str:
        return "task.chat_template=none" if self.mode == "none" else "the tokenizer has no chat template"

    def messages(self, prompt: str | Messages) -> Messages:
        """The chat the template renders: a string becomes one user message after the system prompt."""
        prompt = as_prompt(prompt)
        if isinstance(prompt, list):
            return prompt
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return system + [{"role": "user", "content": prompt}]

    def _render(self, prompt: str | Messages, tokenize: bool):
        try:
            return self.tokenizer.apply_chat_template(self.messages(prompt), chat_template=self.template,
                                                      tools=self.tools, add_generation_prompt=True,
                                                      tokenize=tokenize, return_dict=False)
        except PromptError:
            raise
        except Exception as e:  # jinja2's errors, and whatever a template's raise_exception() raises
            raise PromptError(f"{self.template_name} failed to render the prompt {clip(prompt)}: "
                              f"{type(e).__name__}: {e}") from e

    def _plain(self, prompt: str | Messages) -> str:
        prompt = as_prompt(prompt)
        if isinstance(prompt, list):
            raise PromptError(f"the prompt is chat messages but {self._no_template()}: set task.chat_template to a "
                              ".jinja file (or auto with a model.path whose tokenizer has one); "
                              f"prompt {clip(prompt)}")
        return prompt

    def encode(self, prompt: str | Messages) -> list[int]:
        """The prompt's token ids: the chat template's own ids, or the plain tokenisation (with the
        tokenizer's special tokens, e.g. BOS) when no template renders it."""
        if self.uses_template:
            return list(self._render(prompt, tokenize=True))
        return list(self.tokenizer(self._plain(prompt)).input_ids)

    def text(self, prompt: str | Messages) -> str:
        """The prompt as the policy sees it, for logs (its tokenisation need not equal `encode`)."""
        return self._render(prompt, tokenize=False) if self.uses_template else self._plain(prompt)

    def encode_answer(self, answer: ReferenceAnswer) -> tuple[list[int], list[int]]:
        """A warm-up target: the answer's tokens, no special tokens added, then EOS (the stop token), and
        which of them are trained (1) or context (0). A plain answer is trained whole; of an episode's
        turns (`ReferenceAnswer`) the policy's are trained, with the EOS, and the observations are not.
        Each turn is tokenised on its own, as an episode's turns and observations are."""
        if self.tokenizer.eos_token_id is None:
            raise PromptError("the tokenizer has no eos_token: a warm-up answer needs a stop token")
        turns = [answer] if isinstance(answer, str) else answer
        if not (isinstance(turns, list) and len(turns) % 2 == 1 and all(isinstance(t, str) for t in turns)):
            raise PromptError(f"a warm-up answer is a string or an episode's turns (a list of strings, the "
                              f"policy's first and last, observations between them), got {clip(answer)}")
        ids, trained = [], []
        for i, turn in enumerate(turns):
            turn_ids = list(self.tokenizer(turn, add_special_tokens=False).input_ids)
            ids += turn_ids
            trained += [1 - i % 2] * len(turn_ids)
        return ids + [self.tokenizer.eos_token_id], trained + [1]


class OverlongPrompts:
    """`task.overlong_prompt` for one stream of rows: a prompt over `limit` tokens is dropped
    (counted, the first one logged and kept as `example`) or is an error naming where it is."""

    def __init__(self, mode: str, limit: int, metric: str = "data/dropped_rows"):
        if mode not in ("drop", "error"):
            raise ValueError(f"task.overlong_prompt must be drop or error, got {mode!r}")
        if limit < 1:
            raise ValueError(f"no room for a prompt: the prompt limit (model.max_position_embeddings - "
                             f"rollout.max_new_tokens) is {limit}")
        self.mode, self.limit, self.metric = mode, limit, metric
        self.dropped = 0
        self.example: str | None = None

    def fits(self, num_tokens: int, where: str, prompt: str | Messages) -> bool:
        """True when a prompt of `num_tokens` fits; False (counted) when it is dropped; raises under `error`."""
        if num_tokens <= self.limit:
            return True
        what = (f"{where}: the prompt has {num_tokens} tokens, over the limit of {self.limit} "
                f"(model.max_position_embeddings - rollout.max_new_tokens); prompt {clip(prompt)}")
        if self.mode == "error":
            raise PromptError(f"{what}. Set task.overlong_prompt=drop to skip such rows, or make room for them")
        self.dropped += 1
        if self.example is None:
            self.example = what
            log.warning("dropping overlong prompts (task.overlong_prompt=drop), counted in %s; the first: %s",
                        self.metric, what)
        return False

    def metrics(self) -> dict[str, float]:
        return {self.metric: float(self.dropped)}


def where(task: Task, index: int, split: str) -> str:
    """Where row `index` comes from: the task's own words (a file and row) when it has them."""
    where_fn = getattr(task, "where", None)
    return where_fn(index, split) if where_fn is not None else f"{split} row {index}"


def encode_row(task: Task, encoder: PromptEncoder, row: TaskRow, index: int, split: str) -> list[int]:
    """The row's prompt ids; an error names where the row comes from."""
    try:
        return encoder.encode(row.prompt)
    except PromptError as e:
        raise PromptError(f"{where(task, index, split)}: {e}") from e


def eval_rows_that_fit(task: Task, encoder: PromptEncoder,
                       overlong: OverlongPrompts) -> tuple[list[TaskRow], list[list[int]]]:
    """The task's held-out rows whose prompts fit, and their prompt ids."""
    rows, ids = [], []
    for j, row in enumerate(task.eval_rows()):
        prompt_ids = encode_row(task, encoder, row, j, "eval")
        if overlong.fits(len(prompt_ids), where(task, j, "eval"), row.prompt):
            rows.append(row)
            ids.append(prompt_ids)
    return rows, ids
