"""A run directory as the report reads it: metrics per key, what the samples did, the shown samples, the timeline.

Everything is read in one pass and kept bounded, so a run of 10,000 steps and a
million samples gives a report of the same size as a run of a thousand steps:
per-sample figures are aggregated (counts by cause, finish reason, staleness),
and only the samples the job kept token by token (`trained_samples.jsonl`'s
`shown`, the W&B table's rows) are browsed, at most `MAX_SHOWN` of them spread
evenly over the steps, each cut to `MAX_TOKENS` response tokens. What was left out
is said in `Run.notes`, which the report prints.

A malformed line of a JSONL file (a job killed while writing it) is skipped and
counted, never fatal: the report names the file and the first such line.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from cispo.rollout.timeline import TIMELINE_FILE
from cispo.trained_samples import TRAINED_SAMPLES_FILE

METRICS_FILE = "metrics.jsonl"
MAX_SHOWN = 600  # samples browsed per run
MAX_TOKENS = 1000  # response tokens kept per browsed sample
MAX_PROMPT_CHARS = 2000  # prompt characters kept per browsed sample (its head and its tail)


class NotARunError(ValueError):
    """A directory that holds no run."""


@dataclass
class Run:
    name: str
    directory: Path
    metrics: dict[str, tuple[list[int], list[float]]]  # key -> (steps, values), in file order
    samples: int = 0  # samples trained, all steps
    finish_reasons: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)  # the reward's `status` detail, where it gives one
    masked_by_cause: Counter = field(default_factory=Counter)  # samples masked from the loss, by why
    staleness: Counter = field(default_factory=Counter)  # learner step - policy version -> samples
    shown: list[dict] = field(default_factory=list)  # the browsed samples
    spans: list[dict] = field(default_factory=list)  # timeline.jsonl rows
    notes: list[str] = field(default_factory=list)  # what was sampled, cut or skipped


def read_run(directory: Path, name: str) -> Run:
    directory = Path(directory)
    if not (directory / METRICS_FILE).exists():
        raise NotARunError(f"{directory}: no {METRICS_FILE} there; give a job's trainer.output_dir")
    run = Run(name, directory, {})
    for _, row in _jsonl(directory / METRICS_FILE, run.notes, required={"step": int}):
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):  # lists (learner/is_sums) are not curves
                steps, values = run.metrics.setdefault(key, ([], []))
                if steps and steps[-1] == row["step"]:  # logged twice at a step (the final eval): the last counts
                    values[-1] = float(value)
                else:
                    steps.append(row["step"])
                    values.append(float(value))
    if (directory / TRAINED_SAMPLES_FILE).exists():
        _read_samples(run, directory / TRAINED_SAMPLES_FILE)
    else:
        run.notes.append(f"no {TRAINED_SAMPLES_FILE}: no samples to show")
    if (directory / TIMELINE_FILE).exists():
        span = {"kind": str, "start": float, "end": float}
        run.spans = [r for _, r in _jsonl(directory / TIMELINE_FILE, run.notes, required=span)]
    return run


def _read_samples(run: Run, path: Path) -> None:
    """Aggregate every sample; keep the shown ones of evenly spread steps."""
    shown_lines: list[tuple[int, int]] = []  # (offset, number shown) of each line with shown samples
    for offset, row in _jsonl(path, run.notes, required={"step": int}):
        _count(run, row)
        if row.get("shown"):
            shown_lines.append((offset, len(row["shown"])))
    total_shown = sum(n for _, n in shown_lines)
    keep = _spread(shown_lines, MAX_SHOWN)
    if total_shown > MAX_SHOWN:
        run.notes.append(f"sample browser: {sum(n for o, n in shown_lines if o in keep)} of the {total_shown} "
                         f"samples kept token by token, from {len(keep)} steps spread evenly over the run")
    with open(path, "rb") as f:  # only the chosen lines are read again
        for offset in sorted(keep):
            f.seek(offset)
            row = json.loads(f.readline())
            run.shown.extend(_shown(row, i) for i in range(len(row["shown"])))
    if any([s.pop("cut") for s in run.shown]):
        run.notes.append(f"sample browser: responses longer than {MAX_TOKENS} tokens show their first {MAX_TOKENS}")


def _count(run: Run, row: dict) -> None:
    learner_step = row["step"] - 1
    errors = row.get("reward_errors", [])
    run.samples += len(row.get("sample_ids", []))
    run.finish_reasons.update(row.get("finish_reasons", []))
    run.statuses.update(d["status"] for d in row.get("reward_details", []) if isinstance(d.get("status"), str))
    run.staleness.update(learner_step - v for v in row.get("policy_versions", []))
    for reward, error in zip(row.get("rewards", []), errors):
        if error is not None or reward is None or not math.isfinite(reward):
            run.masked_by_cause[masked_cause(error, reward)] += 1


def masked_cause(error: str | None, reward: float | None) -> str:
    """Why a sample was masked, as few words as group alike errors: the error's last line, numbers as N."""
    if error is None:
        return "no reward" if reward is None else "reward is not finite"
    lines = [line for line in error.strip().splitlines() if line.strip()] or ["(empty error)"]
    return re.sub(r"\d+(\.\d+)?", "N", lines[-1].strip())[:120]


def _shown(row: dict, i: int) -> dict:
    """The i-th shown sample of a step, with what the browser filters on."""
    s, details = row["shown"][i], _at(row, "reward_details", i) or {}
    reward, error = _at(row, "rewards", i), _at(row, "reward_errors", i)
    masked = error is not None or reward is None or not math.isfinite(reward)
    prompt = _head_and_tail(s.get("prompt", ""))
    tokens = s.get("tokens", [])
    return {"step": row["step"], "id": _at(row, "sample_ids", i), "prompt": prompt,
            "tokens": tokens[:MAX_TOKENS], "logprobs": s.get("logprobs", [])[:MAX_TOKENS],
            "loss_mask": s.get("loss_mask", [])[:MAX_TOKENS], "length": len(tokens), "cut": len(tokens) > MAX_TOKENS,
            "reward": reward if reward is not None and math.isfinite(reward) else None,
            "advantage": _at(row, "advantages", i), "finish": _at(row, "finish_reasons", i),
            "status": "masked" if masked else details.get("status", ""), "error": error or "",
            "version": _at(row, "policy_versions", i), "version_spans": _at(row, "version_spans", i) or [],
            "details": _short_transcript(details)}


def _head_and_tail(text: str) -> str:
    """`text`, or its head and tail when it is longer than MAX_PROMPT_CHARS."""
    if len(text) <= MAX_PROMPT_CHARS:
        return text
    half = MAX_PROMPT_CHARS // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"


def _short_transcript(details: dict) -> dict:
    """An agent episode's details with each transcript message cut to its head and tail."""
    transcript = details.get("transcript")
    if not isinstance(transcript, list):
        return details
    return {**details, "transcript": [{**m, "text": _head_and_tail(str(m.get("text", "")))}
                                      for m in transcript if isinstance(m, dict)]}


def _at(row: dict, key: str, i: int):
    values = row.get(key) or []
    return values[i] if i < len(values) else None


def _spread(lines: list[tuple[int, int]], budget: int) -> set[int]:
    """Of (key, samples) pairs, keys spread evenly whose samples add up to at most `budget` (at least one)."""
    if sum(n for _, n in lines) <= budget:
        return {key for key, _ in lines}
    wanted = max(1, budget // max(n for _, n in lines))
    return {lines[round(i * (len(lines) - 1) / max(wanted - 1, 1))][0] for i in range(wanted)}


def _jsonl(path: Path, notes: list[str], required: dict[str, type]) -> Iterator[tuple[int, dict]]:
    """(byte offset, object) of each line of a JSONL file; malformed lines (not JSON, or an object without
    the `required` keys and types; an int passes for a float) are skipped and counted in `notes`."""
    bad, first_bad, offset = 0, 0, 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if isinstance(row, dict) and all(isinstance(row.get(k), (int, float) if t is float else t)
                                             for k, t in required.items()):
                yield start, row
            else:
                bad, first_bad = bad + 1, first_bad or number
    if bad:
        notes.append(f"{path}: {bad} malformed line(s) skipped, the first at line {first_bad}")
