"""SWE tasks played as agent episodes (`env.mode=agent`).

`AgentTask` is a `SWETask` as the job sees it in agent mode: a row's prompt is the
agent's prompt (the issue, and the tools in the policy's own format), and a reference
answer is the trajectory of an agent that applies the gold patch and submits, for the
supervised warm-up. `AgentPlayer` plays one episode of a row with the policy the
rollout source hands it (`cispo.rollout.episodes`) and returns the graded sample.
"""

from __future__ import annotations

from cispo.envs.agent import AgentConfig, render_prompt, run_episode
from cispo.envs.agent_format import AgentFormat
from cispo.envs.pool import SandboxPool
from cispo.envs.swe_task import SWETask
from cispo.envs.task import TaskRow
from cispo.types import Sample, SamplingParams

_HEREDOC_END = "CISPO_GOLD_PATCH_END"


def reference_trajectory(patch: str, fmt: AgentFormat) -> str:
    """An episode that applies `patch` with git and submits: its turns and observations, in `fmt`."""
    apply = fmt.call("bash", {"command": f"git apply <<'{_HEREDOC_END}'\n{patch}{_HEREDOC_END}"})
    applied = fmt.observation_head + "[exit code 0]" + fmt.observation_tail  # git apply prints nothing
    return apply + applied + fmt.turn_prefix + fmt.call("submit", {})


class AgentTask:
    """The Task Protocol over a SWETask's rows, with the agent's prompt in place of the single-shot one.
    `tools`: what the prompt encoder declares through the chat template (None: the built-in format)."""

    def __init__(self, task: SWETask, config: AgentConfig, fmt: AgentFormat):
        self.task, self.config, self.fmt, self.name, self.tools = task, config, fmt, task.name, fmt.tools

    def _agent_row(self, row: TaskRow) -> TaskRow:
        instance = self.task.instance(row.metadata["instance_id"])
        return TaskRow(render_prompt(instance, self.config, self.fmt), row.metadata)

    def row(self, index: int) -> TaskRow:
        return self._agent_row(self.task.row(index))

    def eval_rows(self) -> list[TaskRow]:
        return [self._agent_row(row) for row in self.task.eval_rows()]

    def reference_pair(self, index: int):
        row = self.row(index)
        return row.prompt, reference_trajectory(self.task.instance(row.metadata["instance_id"]).patch, self.fmt)

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
