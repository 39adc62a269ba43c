"""A user's prompts from a file (`task=dataset`, `task=math`): JSONL, JSON, Parquet, CSV, or a
directory written by `datasets.Dataset.save_to_disk`.

Row i of the training stream is a pure function of (seed, i), so resume is exact: the file's
rows minus the held-out ones, in a permutation of (seed, epoch) for epoch i // rows, so each
pass over the data has an order of its own. The held-out rows are `task.eval_path`'s, or else
`task.eval_size` rows of `task.path` drawn by the seed and never trained on. Each row's columns
reach the reward as its metadata, unchanged; `task.answer_key`'s value is also `answer` there.

How the file is read, and why (measured on a 2-core machine, 1.0 GB JSONL of 2M rows):
- JSONL, the format of large RL sets, is indexed by this module: one pass over the file in
  16 MB chunks finds the line ends (8 bytes a row), and a row is one seek-and-read plus
  `json.loads` when it is asked for. The first row is ready in 4-6 s (warm / cold page cache;
  2 s of it the scan, the rest the hold-out draw and the epoch's permutation), RSS peaking
  ~70 MB above the start. `datasets.load_dataset("json")` first converts the whole file to an
  Arrow cache: 85 s and +260 MB RSS on the same file (0.3 s once cached), too slow for a
  first step within 30 s. A row's values are `json.loads`'s, exactly as the line has them.
- JSON, Parquet and CSV go through `datasets.load_dataset`, and a save_to_disk directory through
  `datasets.load_from_disk`: memory-mapped Arrow, converted once into the `datasets` cache
  (`HF_DATASETS_CACHE`). A JSON array must be parsed whole anyway, and Parquet is already columnar.
Neither builds Python objects for rows that are not asked for. The columns are checked when the
task is built (the prompt column must exist; the first row is validated in full); any other row
is validated when it is read, so a bad row 1,500,000 is reported when training reaches it, naming
file, row and key.

A dataset brings no tokenizer. Without `model.path` the job gets `build_tokenizer`'s: one token
per byte (the SWE task's) plus a small chat template, so a random-init policy trains on any text,
chat-message prompts included, with nothing to download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cispo.envs.chat import PromptError, as_prompt, clip
from cispo.envs.task import Messages, TaskRow, register_task

# The byte tokenizer's chat template: role markers in plain bytes, EOS after an assistant turn
# (where the policy learns to stop), and the generation prompt opening the assistant's turn.
BYTE_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# File formats read through `datasets` (by extension); .jsonl is indexed here, a directory is save_to_disk's.
ARROW_FORMATS = {".json": "json", ".parquet": "parquet", ".csv": "csv"}
CHUNK_BYTES = 16 << 20
# Second words of the seed sequences, so the hold-out draw and each epoch's permutation are
# independent streams of one seed: default_rng([seed, HOLDOUT]), default_rng([seed, EPOCH, epoch]).
HOLDOUT, EPOCH = 0, 1


class DatasetError(ValueError):
    """A dataset file, or a row of it, that cannot be served: the message names file, row and key."""


class JsonLines:
    """The rows of a JSONL file, read one at a time: an index of line ends, then a seek and a read
    per row. Blank lines are no rows; row k is the k-th non-blank line."""

    def __init__(self, path: Path):
        self.path = path
        ends, size = [], 0
        buffer = bytearray(CHUNK_BYTES)  # reused: RSS stays flat however large the file
        with open(path, "rb") as f:
            while n := f.readinto(buffer):
                ends.append(np.flatnonzero(np.frombuffer(buffer, np.uint8, count=n) == ord("\n")) + size)
                size += n
        ends = np.concatenate(ends) if ends else np.empty(0, np.int64)
        if size and (len(ends) == 0 or ends[-1] != size - 1):
            ends = np.append(ends, size)  # the last line has no newline
        self._ends = ends  # (lines,) offset of line j's end (its '\n', or the file's end)
        lengths = np.diff(ends, prepend=-1) - 1  # (lines,) line j is [ends[j-1] + 1, ends[j])
        blank = lengths == 0
        for j in np.flatnonzero(lengths == 1):  # "\r" alone (a CRLF file's blank line) is blank too
            blank[j] = self._read(int(ends[j]) - 1, 1).isspace()
        del lengths
        # (rows,) line of row k; None when no line is blank (the common case: no second array).
        self._lines = np.flatnonzero(~blank) if blank.any() else None
        self.columns = sorted(self.record(0)) if len(self) else []

    def __len__(self) -> int:
        return len(self._lines) if self._lines is not None else len(self._ends)

    def _line(self, k: int) -> int:
        return int(self._lines[k]) if self._lines is not None else k

    def _read(self, start: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(length)

    def where(self, k: int) -> str:
        return f"{self.path} row {k} (line {self._line(k) + 1})"

    def record(self, k: int) -> dict[str, Any]:
        j = self._line(k)
        start = int(self._ends[j - 1]) + 1 if j else 0
        raw = self._read(start, int(self._ends[j]) - start)
        try:
            value = json.loads(raw)
        except ValueError as e:
            raise DatasetError(f"{self.where(k)}: not valid JSON ({e}): {clip(raw)}") from None
        if not isinstance(value, dict):
            raise DatasetError(f"{self.where(k)}: a row must be a JSON object, got {type(value).__name__}")
        return value


class ArrowRows:
    """The rows of a file `datasets` reads (or of a save_to_disk directory), memory-mapped Arrow."""

    def __init__(self, path: Path, fmt: str | None):
        import datasets  # ~1 s to import: only for the formats that need it

        self.path = path
        what = f"as {fmt}" if fmt else "as a directory written by datasets' save_to_disk"
        try:
            data = (datasets.load_from_disk(str(path)) if fmt is None
                    else datasets.load_dataset(fmt, data_files=str(path), split="train"))
        except Exception as e:  # each format's reader raises its own kinds
            raise DatasetError(f"{path}: cannot be read {what}: {type(e).__name__}: {e}") from e
        if isinstance(data, datasets.DatasetDict):
            raise DatasetError(f"{path} holds the splits {sorted(data)}: point at one split's directory, "
                               f"e.g. {path / next(iter(data))}")
        self.data, self.columns = data, sorted(data.column_names)

    def __len__(self) -> int:
        return len(self.data)

    def where(self, k: int) -> str:
        return f"{self.path} row {k}"

    def record(self, k: int) -> dict[str, Any]:
        return self.data[k]


def open_rows(path: str | Path, key: str) -> JsonLines | ArrowRows:
    """The rows of `path`, by its extension; `key` is the config key that named it (for errors)."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise DatasetError(f"{key}={str(path)!r}: no such file or directory ({p})")
    if p.is_dir():
        return ArrowRows(p, None)
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return JsonLines(p)
    if suffix in ARROW_FORMATS:
        return ArrowRows(p, ARROW_FORMATS[suffix])
    raise DatasetError(f"{key}={str(path)!r}: unknown format {suffix or '(no extension)'!r}; expected .jsonl, "
                       ".json, .parquet, .csv, or a directory written by datasets' save_to_disk")


class DatasetTask:
    """Prompts and answers from a dataset file, shuffled per epoch by the seed."""

    def __init__(self, path: str | Path, prompt_key: str = "prompt", answer_key: str = "answer", seed: int = 1234,
                 eval_size: int = 64, eval_path: str | Path | None = None, name: str = "dataset"):
        if seed < 0:
            raise DatasetError(f"task.seed must be >= 0, got {seed}")
        self.name, self.prompt_key, self.answer_key, self.seed = name, prompt_key, answer_key, seed
        self.source = self._checked(open_rows(path, "task.path"))
        n = len(self.source)
        if eval_path is not None:
            held = self._checked(open_rows(eval_path, "task.eval_path"))
            self._pool = None  # every row of task.path trains
            eval_at = [(held, k) for k in range(len(held))]
        else:
            if not 0 <= eval_size < n:
                raise DatasetError(f"task.eval_size={eval_size} must be >= 0 and leave training rows: "
                                   f"{self.source.path} has {n} rows (or set task.eval_path)")
            order = np.random.default_rng([seed, HOLDOUT]).permutation(n)
            self._pool = order[eval_size:]  # (n - eval_size,) file rows that train
            eval_at = [(self.source, int(k)) for k in np.sort(order[:eval_size])]
        self._eval = [self._row(src, k) for src, k in eval_at]  # read once: validated up front, same every call
        self._eval_where = [src.where(k) for src, k in eval_at]
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation): one epoch at a time

    def _checked(self, source: JsonLines | ArrowRows) -> JsonLines | ArrowRows:
        """`source` once its columns hold the prompt key and its first row is a valid row."""
        if not len(source):
            raise DatasetError(f"{source.path}: no rows")
        if self.prompt_key not in source.columns:
            raise DatasetError(f"{source.path}: task.prompt_key={self.prompt_key!r} is not a column; "
                               f"the columns are {source.columns}")
        self._row(source, 0)
        return source

    def __len__(self) -> int:
        """Training rows in one epoch."""
        return len(self._pool) if self._pool is not None else len(self.source)

    def _file_row(self, index: int) -> int:
        if index < 0:
            raise IndexError(f"training row {index}: rows count from 0")
        epoch, position = divmod(index, len(self))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, EPOCH, epoch]).permutation(len(self)))
        k = self._order[1][position]
        return int(self._pool[k]) if self._pool is not None else int(k)

    def _row(self, source: JsonLines | ArrowRows, k: int) -> TaskRow:
        record = source.record(k)
        if self.prompt_key not in record:
            raise DatasetError(f"{source.where(k)}: no key {self.prompt_key!r} (task.prompt_key); "
                               f"the row has {sorted(record)}")
        try:
            prompt = as_prompt(record[self.prompt_key])
        except PromptError as e:
            raise DatasetError(f"{source.where(k)}, key {self.prompt_key!r} (task.prompt_key): {e}") from None
        metadata = dict(record)
        if self.answer_key in record:
            metadata["answer"] = record[self.answer_key]
        return TaskRow(prompt=prompt, metadata=metadata)

    def row(self, index: int) -> TaskRow:
        """Training row number `index` (epochs cycle, each in its own order)."""
        return self._row(self.source, self._file_row(index))

    def where(self, index: int, split: str = "training") -> str:
        """Which file and row training (or eval) row `index` is, for messages about it."""
        if split == "eval":
            return f"eval row {index} = {self._eval_where[index]}"
        return f"training row {index} = {self.source.where(self._file_row(index))}"

    def eval_rows(self) -> list[TaskRow]:
        return list(self._eval)

    def reference_pair(self, index: int) -> tuple[str | Messages, str]:
        """(prompt, answer) of training row `index`, for the supervised warm-up."""
        row = self.row(index)
        answer = row.metadata.get(self.answer_key)
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)  # a CSV or Parquet column of numbers
        if not isinstance(answer, str) or not answer:
            raise DatasetError(f"{self.where(index)}, key {self.answer_key!r} (task.answer_key): the warm-up "
                               f"(trainer.sft_steps > 0) needs a non-empty string answer, got {clip(answer)}; "
                               f"the row has {sorted(row.metadata)}")
        return row.prompt, answer

    @staticmethod
    def build_tokenizer():
        """One token per byte plus `BYTE_CHAT_TEMPLATE`, for a policy the job creates from scratch;
        with `model.path` the checkpoint's own tokenizer (and chat template) is used instead."""
        from cispo.envs.swe_task import SWETask  # its byte-level tokenizer; the import pulls in the SWE stack

        tokenizer = SWETask.build_tokenizer()
        tokenizer.chat_template = BYTE_CHAT_TEMPLATE
        return tokenizer


def dataset_task(cfg, name: str) -> DatasetTask:
    if not cfg.path:
        raise DatasetError(f"task.path is required for task.name={name}: a .jsonl, .json, .parquet or .csv file, "
                           "or a directory written by datasets' save_to_disk")
    return DatasetTask(cfg.path, cfg.prompt_key, cfg.answer_key, cfg.seed, cfg.eval_size, cfg.eval_path, name=name)


@register_task("dataset")
def _dataset(cfg) -> DatasetTask:
    return dataset_task(cfg, "dataset")


@register_task("math")
def _math(cfg) -> DatasetTask:
    """The same loader; the math reward (reward.fn=cispo.reward.math:math_verify_reward) scores it."""
    return dataset_task(cfg, "math")
