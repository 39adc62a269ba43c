"""How an agent episode is framed for the policy's tokenizer.

A chat template that declares tools (`apply_chat_template(..., tools=...)`, as the Qwen2.5
/ Qwen3 and Llama 3.1 templates do) gets the tools through it: the prompt is rendered
with `TOOL_SCHEMAS`, a call is written the way the template writes an assistant's
`tool_calls`, and an observation is framed the way the template frames a `tool`
message, followed by its generation prompt. The framing is read off the template by
rendering a conversation with placeholders, so any such template works without a
per-model table. Other tokenizers get the built-in format (`BUILTIN_FORMAT`): plain
text with `<|system|>`, `<|user|>`, `<|assistant|>` and `<|tool|>` markers, and the
tool docs in the system prompt.

Calls are read back by `cispo.envs.agent_tools.parse_tool_call`, which takes both the
tagged form (`<tool_call>{...}</tool_call>`) and a bare JSON object with `arguments`
or `parameters`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from cispo.envs.agent_tools import CALL_CLOSE, CALL_OPEN, REPO, TOOL_DOCS
from cispo.envs.task import Messages

INSTRUCTION = "Change the repository so the issue is fixed, then call submit."


def _function(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


TOOL_SCHEMAS: list[dict] = [
    _function("bash", f"Run a command in a shell session that starts in the repository root ({REPO}); cd "
              "and exported variables persist between calls; no network.",
              {"command": {"type": "string", "description": "the command"}}, ["command"]),
    _function("str_replace_editor", "View, create or edit a file. view: path, optional view_range [start, end]; "
              "create: path, file_text; str_replace: path, old_str (must occur once), new_str; insert: path, "
              "insert_line (0 = top), new_str.",
              {"command": {"type": "string", "enum": ["view", "create", "str_replace", "insert"]},
               "path": {"type": "string"}, "view_range": {"type": "array", "items": {"type": "integer"}},
               "file_text": {"type": "string"}, "old_str": {"type": "string"}, "new_str": {"type": "string"},
               "insert_line": {"type": "integer"}}, ["command", "path"]),
    _function("submit", "End the episode: your changes to the repository are graded by its tests.", {}, []),
]


@dataclass(frozen=True)
class AgentFormat:
    """The text around an episode's turns. An observation is `observation_head` + the tool's output
    (cut to fit) + `observation_tail`, then `turn_prefix` opens the next model turn."""

    turn_prefix: str
    observation_head: str
    observation_tail: str
    call: Callable[[str, dict[str, Any]], str]  # (tool name, arguments) -> the call as the model writes it
    tools: list[dict] | None  # declared through the chat template; None: described in the prompt's text

    def observation(self, output: str) -> str:
        """A tool's output as the policy reads it, up to the policy's next turn."""
        return self.observation_head + output + self.observation_tail + self.turn_prefix

    def prompt(self, system: str, problem_statement: str, tool_docs: bool = True) -> str | Messages:
        """The episode's prompt: chat messages for a template (rendered with `tools`), or plain text,
        with the tools described in it unless `tool_docs` is False."""
        if self.tools is not None:
            return [{"role": "system", "content": system},
                    {"role": "user", "content": f"{problem_statement.strip()}\n\n{INSTRUCTION}"}]
        docs = f"\n\n{TOOL_DOCS}" if tool_docs else ""
        return (f"<|system|>\n{system}{docs}\n<|user|>\n{problem_statement.strip()}\n\n{INSTRUCTION}"
                + self.turn_prefix)


def tagged_call(name: str, arguments: dict[str, Any]) -> str:
    return f"{CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments})}{CALL_CLOSE}"


BUILTIN_FORMAT = AgentFormat(turn_prefix="\n<|assistant|>\n", observation_head="\n<|tool|>\n",
                             observation_tail="", call=tagged_call, tools=None)

_ASSISTANT, _OBSERVATION = "\x00ASSISTANT-TURN\x00", "\x00TOOL-OUTPUT\x00"
_PROBE: Messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


def agent_format(tokenizer, template: str | None = None) -> AgentFormat:
    """The chat template's tool format when it declares tools (`template`: a Jinja text in place of the
    tokenizer's own), else `BUILTIN_FORMAT`."""
    def render(messages: Messages, generation_prompt: bool, tools: list[dict] | None = TOOL_SCHEMAS) -> str:
        return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)

    if template is None and tokenizer.chat_template is None:
        return BUILTIN_FORMAT
    opened = render(_PROBE, True)
    if opened == render(_PROBE, True, tools=None):
        return BUILTIN_FORMAT  # the template ignores tools
    turn_prefix = opened[len(render(_PROBE, False)):]
    chat = _PROBE + [{"role": "assistant", "content": _ASSISTANT}, {"role": "tool", "content": _OBSERVATION}]
    framed = render(chat, True)
    after_turn = framed[framed.index(_ASSISTANT) + len(_ASSISTANT):]
    head, tail = after_turn.split(_OBSERVATION)
    if not tail.endswith(turn_prefix):
        raise ValueError("the chat template does not end a tool message with its generation prompt; "
                         "set task.chat_template=none to use the built-in agent format")

    plain_turn = render(_PROBE + [{"role": "assistant", "content": _ASSISTANT}], False)
    turn_end = plain_turn[plain_turn.index(_ASSISTANT) + len(_ASSISTANT):]  # what the template puts after a turn

    def call(name: str, arguments: dict[str, Any]) -> str:
        """The call as the template renders an assistant's tool_calls, without the turn's own framing
        (the tagged form when the template renders it some other way than after its generation prompt)."""
        message = {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}
        rendered = render(_PROBE + [message], False)
        if not (rendered.startswith(opened) and rendered.endswith(turn_end)):
            return tagged_call(name, arguments)
        return rendered[len(opened): len(rendered) - len(turn_end)].strip()

    return AgentFormat(turn_prefix=turn_prefix, observation_head=head,
                       observation_tail=tail[: len(tail) - len(turn_prefix)], call=call, tools=TOOL_SCHEMAS)
