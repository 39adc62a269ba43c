"""The one-edit task family (task=swe_edit): disjoint splits, and a reference episode that resolves."""

from __future__ import annotations

import json
import statistics

import pytest

from cispo.envs.agent import AgentConfig, run_episode
from cispo.envs.agent_format import BUILTIN_FORMAT
from cispo.envs.swe_agent import AgentTask, edit_trajectory, reference_trajectory
from cispo.envs.swe_edit_tasks import edit_task, specs
from cispo.envs.repo import read_file
from cispo.envs.swe_instances import load_instances
from cispo.envs.swe_task import SWETask
from scripted_policy import Turns


def test_the_held_out_tasks_share_no_file_name_or_faulty_expression_with_training():
    train, held_out = specs(seed=3, train=200, held_out=40)
    assert (len(train), len(held_out)) == (200, 40)
    names = lambda tasks: {spec.name for spec, _ in tasks}  # noqa: E731
    faults = lambda tasks: {edit["old_str"] for _, edit in tasks}  # noqa: E731
    assert len(names(train)) == 200 and not names(train) & names(held_out)
    assert not faults(train) & faults(held_out)
    for spec, edit in train + held_out:  # the issue names the file, the fault and the fix
        assert f"In {edit['path']}, `{edit['old_str']}` should be `{edit['new_str']}`." == spec.problem_statement
        assert spec.base_files[edit["path"]].count(edit["old_str"]) == 1
    assert specs(seed=3, train=200, held_out=40)[1][0][0] == held_out[0][0]  # a pure function of the seed
    with pytest.raises(ValueError, match="4400 training \\+ 32 held-out tasks need as many file names; the generator has 4352"):
        specs(seed=3, train=4400, held_out=32)  # asking for more than exist is an error, not an endless draw
    with pytest.raises(ValueError, match="task.train_size must be >= 1 and task.eval_size >= 0, got 0 and 32"):
        specs(seed=3, train=0, held_out=32)  # not an empty training set found later


def test_the_held_out_tasks_are_drawn_like_the_training_tasks():
    """The held-out tasks are a random share of the draw, not its start: the generator's 256 two-syllable
    file names run out early in a draw, so its first tasks hold far more of them than the rest (14 of the
    first 32 against 6% of the next 4,000 for seed 0), and a policy trained on the rest lengthens them."""
    train, held_out = specs(seed=3, train=2000, held_out=400)
    name_length = lambda tasks: statistics.mean(len(spec.name) for spec, _ in tasks)  # noqa: E731
    assert abs(name_length(held_out) - name_length(train)) < 0.3  # the draw's start: 5.8 against 6.7


def test_the_editor_reference_episode_is_token_exact_and_resolves(tmp_path, pool):
    """The warm-up's answer for a row with `reference_edit` is exactly the token stream of an episode that
    makes that edit and submits, and the episode resolves the task; a row without one falls back to the
    git-apply episode."""
    task = edit_task(tmp_path, seed=0, held_out=2, train=2)
    assert len(task) == 2 and len(task.eval_rows()) == 2
    assert edit_task(tmp_path, seed=0, held_out=2, train=2).tasks_path == task.tasks_path  # generated once
    tokenizer = task.build_tokenizer()
    config = AgentConfig(max_turns=3)
    agent_task = AgentTask(task, config, BUILTIN_FORMAT)
    prompt, answer = agent_task.reference_pair(0)
    meta = agent_task.row(0).metadata
    instance = task.instance(meta["instance_id"])
    edit_turn, submit_turn = answer[0], answer[2]
    policy = Turns(tokenizer, [edit_turn, submit_turn])
    res = run_episode(instance, policy, tokenizer, pool, config=config, prompt_ids=tokenizer.encode(prompt))
    assert (res.status, res.finish_reason, res.turns) == ("resolved", "stop", 2), res.error
    assert tokenizer.decode(res.response_ids) == "".join(answer) and submit_turn == BUILTIN_FORMAT.call("submit", {})
    assert res.tool_calls == {"str_replace_editor": 1, "submit": 1} and res.malformed_calls == 0
    observation = [t for t, m in zip(res.response_ids, res.loss_mask) if m == 0]
    assert res.response_ids == policy.sampled[0] + observation + policy.sampled[1]
    before = read_file(instance.repo_path, instance.base_commit, meta["reference_edit"]["path"])
    assert answer == edit_trajectory(meta["reference_edit"], before, BUILTIN_FORMAT)

    rows = [json.loads(line) for line in task.tasks_path.read_text().splitlines()]
    held_out = {t.instance_id for t in load_instances(task.tasks_path.parent / "held_out.jsonl")}
    assert held_out == {row.metadata["instance_id"] for row in task.eval_rows()}
    assert not held_out & {row["instance_id"] for row in rows}
    plain = tmp_path / "plain.jsonl"  # the same rows without a reference edit: the git-apply episode
    plain.write_text("".join(json.dumps({**{k: v for k, v in row.items() if k != "reference_edit"},
                                         "repo_path": str(task.tasks_path.parent / row["repo_path"])}) + "\n"
                             for row in rows))
    fallback = AgentTask(SWETask(plain), config, BUILTIN_FORMAT)
    assert fallback.reference_pair(0)[1] == reference_trajectory(instance.patch, BUILTIN_FORMAT)

