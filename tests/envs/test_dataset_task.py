"""DatasetTask: every format it reads, the held-out split, the order of rows, and its errors.

The files are written here with the libraries users write them with (json, csv, `datasets`);
`datasets`' cache goes to the test's tmp_path, not the user's home.
"""

from __future__ import annotations

import csv
import json
import runpy
from pathlib import Path

import datasets
import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from cispo.config import TaskConfig
from cispo.envs.chat import PromptEncoder
from cispo.envs.dataset import DatasetError, DatasetTask
from cispo.envs.task import TaskRow, make_task, task_names
from cispo.reward.loader import load_reward_fn

N = 40
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def records(n: int = N) -> list[dict]:
    return [{"id": k, "prompt": f"What is {k}+{k}?", "answer": str(2 * k), "source": "unit"} for k in range(n)]


def chats(n: int = N) -> list[dict]:
    return [{"id": k, "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{k}+1?"}],
             "answer": str(k + 1)} for k in range(n)]


def write(path: Path, rows: list[dict]) -> str:
    """`rows` as the file (or save_to_disk directory) `path`'s extension says."""
    kind = path.suffix or "dir"
    if kind == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == ".json":
        path.write_text(json.dumps(rows))
    elif kind == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif kind == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


FORMATS = ["data.jsonl", "data.json", "data.parquet", "data.csv", "saved"]


def epoch(task: DatasetTask, number: int = 0) -> list[TaskRow]:
    return [task.row(number * len(task) + i) for i in range(len(task))]


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_serves_every_row_with_its_columns(tmp_path, name):
    task = DatasetTask(write(tmp_path / name, records()), seed=5, eval_size=4)
    rows = epoch(task) + task.eval_rows()
    assert sorted(r.metadata["id"] for r in rows) == list(range(N))
    for r in rows:
        k = r.metadata["id"]
        assert r.prompt == f"What is {k}+{k}?"
        # CSV has no types: its numbers come back as numbers, so "2k" is an int there.
        answer = 2 * k if name.endswith(".csv") else str(2 * k)
        assert r.metadata == {"id": k, "prompt": r.prompt, "answer": answer, "source": "unit"}


@pytest.mark.parametrize("name", ["data.jsonl", "data.json", "data.parquet", "saved"])
def test_chat_message_prompts(tmp_path, name):
    task = DatasetTask(write(tmp_path / name, chats()), eval_size=0)
    for r in epoch(task):
        k = r.metadata["id"]
        assert r.prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{k}+1?"}]
        assert r.metadata["prompt"] == r.prompt and r.metadata["answer"] == str(k + 1)


def test_one_jsonl_file_may_mix_strings_and_messages_and_keep_values_as_written(tmp_path):
    rows = [{"prompt": "2+2?", "answer": "4"},
            {"prompt": [{"role": "user", "content": "3+3?", "name": "ann"}], "answer": 6, "extra": {"a": [1, None]}}]
    task = DatasetTask(write(tmp_path / "mixed.jsonl", rows), eval_size=0)
    got = {json.dumps(r.metadata, sort_keys=True) for r in epoch(task)}
    assert got == {json.dumps(r, sort_keys=True) for r in rows}


def test_the_answer_key_names_the_column_copied_into_answer(tmp_path):
    rows = [{"question": f"{k}?", "solution": f"s{k}"} for k in range(5)]
    task = DatasetTask(write(tmp_path / "d.jsonl", rows), prompt_key="question", answer_key="solution", eval_size=1)
    for i in range(len(task)):
        r = task.row(i)
        assert r.metadata["answer"] == r.metadata["solution"] and r.prompt == r.metadata["question"]
        assert task.reference_pair(i) == (r.prompt, r.metadata["solution"])


def test_without_an_answer_column_rows_still_serve(tmp_path):
    task = DatasetTask(write(tmp_path / "d.jsonl", [{"prompt": f"p{k}"} for k in range(3)]), eval_size=0)
    assert all("answer" not in r.metadata for r in epoch(task))


def test_the_held_out_rows_are_disjoint_from_training_and_fixed(tmp_path):
    path = write(tmp_path / "d.jsonl", records())
    task = DatasetTask(path, seed=11, eval_size=7)
    held = [r.metadata["id"] for r in task.eval_rows()]
    trained = {r.metadata["id"] for e in range(3) for r in epoch(task, e)}
    assert len(held) == 7 and not set(held) & trained and set(held) | trained == set(range(N))
    assert [r.metadata["id"] for r in task.eval_rows()] == held  # the same on every call
    assert [r.metadata["id"] for r in DatasetTask(path, seed=11, eval_size=7).eval_rows()] == held
    assert [r.metadata["id"] for r in DatasetTask(path, seed=12, eval_size=7).eval_rows()] != held


def test_an_eval_file_holds_out_nothing_of_the_training_file(tmp_path):
    train = write(tmp_path / "train.jsonl", records())
    held = write(tmp_path / "held.parquet", [{"prompt": f"eval {k}", "answer": "x"} for k in range(3)])
    task = DatasetTask(train, eval_size=5, eval_path=held)
    assert len(task) == N and [r.prompt for r in task.eval_rows()] == ["eval 0", "eval 1", "eval 2"]
    assert task.where(2, "eval") == f"eval row 2 = {Path(held).resolve()} row 2"


def test_row_i_is_a_pure_function_of_seed_and_i(tmp_path):
    path = write(tmp_path / "d.jsonl", records())
    a, b = DatasetTask(path, seed=1, eval_size=4), DatasetTask(path, seed=1, eval_size=4)
    late = [a.row(i) for i in (100, 3, 37, 3)]  # any order of calls, across epochs
    assert late == [b.row(i) for i in (100, 3, 37, 3)]
    first, second = epoch(a, 0), epoch(a, 1)
    ids = [r.metadata["id"] for r in first]
    assert sorted(ids) == sorted(r.metadata["id"] for r in second) and ids != [r.metadata["id"] for r in second]
    assert ids != sorted(ids)  # shuffled
    assert ids != [r.metadata["id"] for r in epoch(DatasetTask(path, seed=2, eval_size=4))]


def test_blank_lines_crlf_and_a_last_line_without_newline(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\n{"prompt": "a"}\r\n\r\n\n{"prompt": "b"}\r\n{"prompt": "c"}')
    task = DatasetTask(path, eval_size=0)
    assert sorted(r.prompt for r in epoch(task)) == ["a", "b", "c"]
    assert sorted(task.source.where(k) for k in range(3))[-1].endswith("row 2 (line 6)")


def test_reference_pairs_are_the_training_rows(tmp_path):
    task = DatasetTask(write(tmp_path / "d.csv", records()), eval_size=3)
    for i in (0, 5, len(task) + 1):
        prompt, answer = task.reference_pair(i)
        r = task.row(i)
        assert prompt == r.prompt and answer == str(2 * r.metadata["id"])  # CSV's int answer as text


def test_a_warm_up_without_answers_names_the_key_and_row(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"prompt": "p", "gold": "1"}])
    with pytest.raises(DatasetError, match=r"training row 0 = .*d.jsonl row 0 \(line 1\), key 'answer' "
                                           r"\(task.answer_key\).*the row has \['gold', 'prompt'\]"):
        DatasetTask(path, eval_size=0).reference_pair(0)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match=r"task.path='nope.jsonl': no such file or directory \(.*nope.jsonl\)"):
        DatasetTask("nope.jsonl")
    (tmp_path / "d.txt").write_text("hello\n")
    with pytest.raises(DatasetError, match=r"unknown format '.txt'; expected .jsonl, .json, .parquet, .csv"):
        DatasetTask(tmp_path / "d.txt")
    with pytest.raises(DatasetError, match="task.eval_path='missing.csv': no such file"):
        DatasetTask(write(tmp_path / "d.jsonl", records()), eval_path="missing.csv")


@pytest.mark.parametrize("name", FORMATS)
def test_a_missing_prompt_column_lists_the_columns(tmp_path, name):
    path = write(tmp_path / name, [{"question": "q", "answer": "a"}])
    with pytest.raises(DatasetError, match=rf"{name}: task.prompt_key='prompt' is not a column; "
                                           r"the columns are \['answer', 'question'\]"):
        DatasetTask(path, eval_size=0)


def test_a_later_row_without_the_prompt_key_is_named_when_read(tmp_path):
    rows = records(5)
    del rows[3]["prompt"]
    task = DatasetTask(write(tmp_path / "d.jsonl", rows), eval_size=0)  # the schema check reads row 0 only
    with pytest.raises(DatasetError, match=r"d.jsonl row 3 \(line 4\): no key 'prompt' \(task.prompt_key\); "
                                           r"the row has \['answer', 'id', 'source'\]"):
        epoch(task)


@pytest.mark.parametrize("prompt,problem", [
    ("", "the prompt is empty"),
    (12, "the prompt is neither a string nor a list of chat messages: int 12"),
    (None, "the prompt is neither a string nor a list of chat messages: NoneType"),
    ([{"role": "user", "text": "hi"}], "message 0 needs a string 'content', got None"),
    ([{"role": "user", "content": "hi"}, "bye"], "message 1 is str"),
])
def test_a_bad_prompt_names_file_row_and_key(tmp_path, prompt, problem):
    rows = records(4)
    rows[2]["prompt"] = prompt
    task = DatasetTask(write(tmp_path / "d.jsonl", rows), eval_size=0)
    with pytest.raises(DatasetError) as e:
        epoch(task)
    assert f"{tmp_path / 'd.jsonl'} row 2 (line 3), key 'prompt' (task.prompt_key): {problem}" in str(e.value)


def test_a_bad_first_row_fails_when_the_task_is_built(tmp_path):
    with pytest.raises(DatasetError, match=r"d.parquet row 0, key 'prompt' \(task.prompt_key\): the prompt is empty"):
        DatasetTask(write(tmp_path / "d.parquet", [{"prompt": " "}]), eval_size=0)


def test_bad_json_lines_are_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b",\n["c"]\n')
    task = DatasetTask(path, eval_size=0)
    with pytest.raises(DatasetError, match=r"d.jsonl row 1 \(line 2\): not valid JSON"):
        task._row(task.source, 1)
    with pytest.raises(DatasetError, match=r"d.jsonl row 2 \(line 3\): a row must be a JSON object, got list"):
        task._row(task.source, 2)


def test_unreadable_files_and_splits(tmp_path):
    bad = tmp_path / "d.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match=r"d.json: cannot be read as json"):
        DatasetTask(bad)
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(DatasetError, match="plain_dir: cannot be read as a directory written by datasets' save_to"):
        DatasetTask(tmp_path / "plain_dir")
    splits = tmp_path / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records())}).save_to_disk(str(splits))
    with pytest.raises(DatasetError, match=r"holds the splits \['train'\]: point at one split's directory, "
                                           r"e.g. .*splits/train"):
        DatasetTask(splits)
    assert len(DatasetTask(splits / "train", eval_size=0)) == N


def test_empty_files_and_too_large_an_eval_split(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="e.jsonl: no rows"):
        DatasetTask(tmp_path / "e.jsonl")
    with pytest.raises(DatasetError, match=r"task.eval_size=40 must be >= 0 and leave training rows: .* has 40 rows"):
        DatasetTask(write(tmp_path / "d.jsonl", records()), eval_size=N)


def test_the_registry_builds_dataset_and_math_from_the_task_config(tmp_path):
    assert {"dataset", "math"} <= set(task_names())
    path = write(tmp_path / "d.jsonl", records())
    for name in ("dataset", "math"):
        task = make_task(TaskConfig(name=name, path=path, eval_size=2, seed=3))
        assert task.name == name and len(task.eval_rows()) == 2
        assert task.row(0) == DatasetTask(path, eval_size=2, seed=3).row(0)
    with pytest.raises(DatasetError, match="task.path is required for task.name=math"):
        make_task(TaskConfig(name="math"))


def test_the_byte_tokenizer_renders_chats_and_survives_a_save(tmp_path):
    tokenizer = DatasetTask.build_tokenizer()
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))  # what the job loads beside a new policy
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2 = ?"}]
    for tok in (tokenizer, reloaded):
        encoder = PromptEncoder(tok)
        assert encoder.text(chat) == "<bos><|system|>\nBe brief.\n<|user|>\n2+2 = ?\n<|assistant|>\n"
        got = encoder.encode(chat)
        assert got[0] == tok.bos_token_id and tok.bos_token_id not in got[1:]
        assert tok.decode(got[1:]) == encoder.text(chat)[len("<bos>"):]  # one token per byte after <bos>
        assert encoder.encode_answer("4")[0] == tok("4", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert PromptEncoder(reloaded).encode(chat) == PromptEncoder(tokenizer).encode(chat)


def test_a_learnt_bpe_tokenizer_keeps_the_byte_tokenizers_chat_template(tmp_path):
    """model.bpe_vocab on a dataset of chats: the created policy's tokenizer still renders messages."""
    from types import SimpleNamespace

    from cispo.envs.bpe import BASE_VOCAB
    from cispo.job import Job

    task = DatasetTask(write(tmp_path / "chats.jsonl", chats()), eval_size=0)
    job = SimpleNamespace(cfg=SimpleNamespace(model=SimpleNamespace(bpe_vocab=300)))
    Job._new_policy_tokenizer(job, task).save_pretrained(str(tmp_path / "tok"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))  # what the job loads beside a new policy
    assert BASE_VOCAB < len(tok) <= 300  # 40 short chats may hold fewer pairs worth a merge
    chat, byte_encoder, encoder = task.row(3).prompt, PromptEncoder(DatasetTask.build_tokenizer()), PromptEncoder(tok)
    assert encoder.text(chat) == byte_encoder.text(chat)
    got = encoder.encode(chat)
    assert got[0] == tok.bos_token_id and tok.bos_token_id not in got[1:]
    assert tok.decode(got[1:]) == encoder.text(chat)[len("<bos>"):]
    assert len(got) < len(byte_encoder.encode(chat))  # merges learnt from the chats' own text


def test_the_shipped_example_is_what_its_script_writes_and_its_reward_scores_it(monkeypatch):
    monkeypatch.chdir(ROOT)  # conf/task/dataset.yaml names the example relative to the cwd
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig),
                                              OmegaConf.load(ROOT / "conf/task/dataset.yaml")))
    task = make_task(cfg)
    written = runpy.run_path(str(ROOT / "examples/make_dataset.py"))["rows"]()
    shipped = [json.loads(line) for line in (ROOT / "examples/arith.jsonl").read_text().splitlines()]
    assert shipped == written and len(shipped) == 200
    assert any(isinstance(r["prompt"], list) for r in shipped) and any(isinstance(r["prompt"], str) for r in shipped)
    assert len(task) + len(task.eval_rows()) == 200
    reward = load_reward_fn(str(ROOT / "examples/my_reward.py") + ":reward")
    row = task.row(0)
    assert reward(row.prompt, f"The answer is {row.metadata['answer']}", row.metadata)["score"] == 1.0
    assert reward(row.prompt, "I do not know", row.metadata) == {"score": 0.0, "pass": False, "answered": 0.0}
