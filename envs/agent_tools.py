"""The agent's tools (`bash`, `str_replace_editor`, `submit`) and how calls are read from text.

A call is chat-style JSON between tags, as Hermes / Qwen models write it:

    <tool_call>{"name": "bash", "arguments": {"command": "pytest -q"}}</tool_call>

Only the first call of a turn runs. Every tool runs inside the episode's sandbox;
a malformed call or a failing command is an observation for the model, never an
exception: only the daemon failing (`InfraError`) ends an episode early.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cispo.envs.sandbox import Sandbox

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"  # Llama 3.1 may open a call with it
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)
REPO = "/workspace/repo"
_EDITOR = (Path(__file__).parent / "editor_script.py").read_text()

# The bash tool is one shell session per episode: the working directory and exported
# variables carry from call to call. Each call is still its own process group under
# the runner (hard timeout, output cap, nothing left running), so the session is its
# state, saved on exit to SHELL_STATE (wiped with /tmp by the pool's reset) and
# restored before the next command. A command killed at its timeout saves nothing:
# the session restarts from the state before it, and the observation says so.
SHELL_STATE = "/tmp/.cispo-shell-state"
_SHELL = r"""
[ -f "$1" ] && . "$1"
__cispo_state=$1
__cispo_save() { export -n SHLVL; export -p; printf 'cd -- %q 2>/dev/null\n' "$PWD"; }
trap '__cispo_rc=$?; __cispo_save > "$__cispo_state.new" && mv -f "$__cispo_state.new" "$__cispo_state"; exit $__cispo_rc' EXIT
eval "$2"
"""
_RESTARTED = " (the shell was restarted: working directory and exported variables are as before this command)"

TOOL_DOCS = f"""You can use these tools. Call one per turn, exactly like this:
{CALL_OPEN}{{"name": "bash", "arguments": {{"command": "ls"}}}}{CALL_CLOSE}

- bash(command): run a command in a shell session that starts in the repository root
  ({REPO}); cd and exported variables persist between calls; no network.
- str_replace_editor(command, path, ...): command is one of
    view (path; optional view_range [start, end]),
    create (path, file_text),
    str_replace (path, old_str, new_str; old_str must occur exactly once),
    insert (path, insert_line, new_str; inserted after that line, 0 = top).
- submit(): end the episode; your changes to the repository are graded by its tests."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Observation:
    text: str
    submitted: bool = False
    timed_out: bool = False  # the command ran past the tool-call timeout and was killed


class ToolCallError(ValueError):
    """The turn's text holds no call, or one we cannot read: told to the model, not raised to the trainer."""


def parse_tool_call(text: str) -> ToolCall:
    """The turn's first call: tagged (`<tool_call>{...}</tool_call>`, Hermes / Qwen), or else a bare JSON
    object with "name" and "arguments" or "parameters" (Llama 3.1) that starts the turn."""
    m = _CALL.search(text)
    if m:
        try:
            data = json.loads(m.group(1))
        except json.JSONDecodeError as e:
            raise ToolCallError(f"the tool call is not valid JSON: {e.msg} at column {e.colno}") from e
    else:
        span = _bare_call_span(text)
        if span is None:
            raise ToolCallError(f"no tool call found; write one as {CALL_OPEN}{{\"name\": ..., \"arguments\": "
                                f"{{...}}}}{CALL_CLOSE}")
        data = span[0]
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ToolCallError('the tool call must be an object with a "name" string')
    args = data.get("arguments", data.get("parameters", {}))
    if not isinstance(args, dict):
        raise ToolCallError('"arguments" must be an object')
    return ToolCall(data["name"], args)


def _bare_call_span(text: str) -> tuple[dict, int] | None:
    """A JSON object naming a tool at the start of the turn (after blanks and a `<|python_tag|>`), and
    the index just past it."""
    start = len(text) - len(text.lstrip())
    if text.startswith(_PYTHON_TAG, start):
        start += len(_PYTHON_TAG)
    if not text.startswith("{", start):
        return None
    try:
        data, end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or "name" not in data or not ({"arguments", "parameters"} & data.keys()):
        return None
    return data, end


def end_of_call(text: str) -> int:
    """Index just past the first complete tool call, or -1 (the turn has none)."""
    m = _CALL.search(text)
    if m:
        return m.end()
    span = _bare_call_span(text)
    return span[1] if span else -1


def run_tool(call: ToolCall, sb: Sandbox, timeout: float, output_cap: int) -> Observation:
    """Execute one call in the sandbox and describe the outcome for the model."""
    if call.name == "submit":
        return Observation("submitted", submitted=True)
    if call.name == "bash":
        command = call.arguments.get("command")
        if not isinstance(command, str) or not command.strip():
            return Observation("error: bash needs a non-empty 'command' string")
        res = sb.exec(["bash", "-c", _SHELL, "bash", SHELL_STATE, command], timeout=timeout, workdir=REPO,
                      output_cap=output_cap)
        status = f"[timed out after {timeout:g} s]{_RESTARTED}" if res.timed_out else f"[exit code {res.exit_code}]"
        sep = "" if not res.output or res.output.endswith("\n") else "\n"
        return Observation(f"{res.output}{sep}{status}", timed_out=res.timed_out)
    if call.name == "str_replace_editor":
        res = sb.exec(["python3", "-c", _EDITOR], stdin=json.dumps(call.arguments).encode(),
                      timeout=timeout, workdir=REPO, output_cap=output_cap)
        if res.timed_out:
            return Observation(f"[editor timed out after {timeout:g} s]", timed_out=True)
        return Observation(res.output)
    return Observation(f"error: unknown tool {call.name!r}; the tools are bash, str_replace_editor, submit")

