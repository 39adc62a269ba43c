"""SWE tasks played as agent episodes (`env.mode=agent`).

`AgentTask` is a `SWETask` as the job sees it in agent mode: a row's prompt is the
agent's prompt (the issue, and the tools in the policy's own format), and a reference
answer, for the supervised warm-up, is the trajectory of an agent that makes the row's
`reference_edit` ({"path", "old_str", "new_str"}: one `str_replace_editor` call) and
submits, or, for a row without one, applies the gold patch with git and submits.
`AgentPlayer` plays one episode of a row with the policy the rollout source hands it
(`cispo.rollout.episodes`) and returns the graded sample.
"""

from __future__ import annotations

import os

from cispo.envs.agent import AgentConfig, render_prompt, run_episode
from cispo.envs.agent_format import AgentFormat
from cispo.envs.agent_tools import REPO
from cispo.envs.editor_script import str_replace
from cispo.envs.pool import SandboxPool
from cispo.envs.repo import read_file
from cispo.envs.swe_task import SWETask
from cispo.envs.task import TaskRow
from cispo.types import Sample, SamplingParams

_HEREDOC_END = "CISPO_GOLD_PATCH_END"


def reference_trajectory(patch: str, fmt: AgentFormat) -> list[str]:
    """An episode that applies `patch` with git and submits, as its turns (`ReferenceAnswer`), in `fmt`."""
    apply = fmt.call("bash", {"command": f"git apply <<'{_HEREDOC_END}'\n{patch}{_HEREDOC_END}"})
    return [apply, fmt.observation("[exit code 0]"), fmt.call("submit", {})]  # git apply prints nothing


def edit_trajectory(edit: dict[str, str], file_text: str, fmt: AgentFormat) -> list[str]:
    """An episode that makes `edit` with one `str_replace_editor` call on a file that reads `file_text`
    and submits, as its turns (`ReferenceAnswer`), in `fmt`: the call, the editor's report, submit."""
    call = fmt.call("str_replace_editor", {"command": "str_replace", **edit})
    _, report = str_replace(file_text, edit["old_str"], edit["new_str"], os.path.normpath(f"{REPO}/{edit['path']}"))
    return [call, fmt.observation(report + "\n"), fmt.call("submit", {})]


class AgentTask:
    """The Task Protocol over a SWETask's rows, with the agent's prompt in place of the single-shot one.
    `tools`: what the prompt encoder declares through the chat template (None: the built-in format)."""

    def __init__(self, task: SWETask, config: AgentConfig, fmt: AgentFormat):
        self.task, self.config, self.fmt, self.name, self.tools = task, config, fmt, task.name, fmt.tools
        self._references: dict[str, list[str]] = {}  # by instance id: an edit's reference reads the repository

    def _agent_row(self, metadata: dict) -> TaskRow:
        instance = self.task.instance(metadata["instance_id"])
        return TaskRow(render_prompt(instance, self.config, self.fmt), metadata)

    def row(self, index: int) -> TaskRow:
        return self._agent_row(self.task.metadata(index))

    def eval_rows(self) -> list[TaskRow]:
        return [self._agent_row(m) for m in self.task.held_out_metadata()]

    def reference_pair(self, index: int):
        """(prompt, the reference episode): the row's `reference_edit` made, else its gold patch applied."""
        row = self.row(index)
        iid = row.metadata["instance_id"]
        if iid not in self._references:
            instance, edit = self.task.instance(iid), row.metadata.get("reference_edit")
            if edit:
                before = read_file(instance.repo_path, instance.base_commit, edit["path"])
                self._references[iid] = edit_trajectory(edit, before, self.fmt)
            else:
                self._references[iid] = reference_trajectory(instance.patch, self.fmt)
        return row.prompt, self._references[iid]

    def build_tokenizer(self):
        return self.task.build_tokenizer()


class AgentPlayer:
    """Plays one episode of a prompt (`cispo.rollout.episodes.Play`) in sandboxes from `pool`."""

    def __init__(self, task: AgentTask, tokenizer, sampling: SamplingParams, pool: SandboxPool):
        self.task, self.tokenizer, self.sampling, self.pool = task, tokenizer, sampling, pool

    def __call__(self, prompt, policy, sample_id: str, group_id: str) -> Sample:
        instance = self.task.task.instance(prompt.metadata["instance_id"])
        result = run_episode(instance, policy, self.tokenizer, self.pool, self.sampling, self.task.config,
                             prompt_ids=prompt.ids, fmt=self.task.fmt)
        sample = result.to_sample(sample_id, group_id, prompt.metadata)
        sample.prompt_text, sample.response_text = prompt.text, self.tokenizer.decode(result.response_ids)
        return sample
