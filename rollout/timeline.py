"""Spans of work on one clock: where the asynchronous driver's time goes.

The driver records `generate` (an engine busy with one call), `score` (one scoring
call), `learn` and `push` spans, each with the actor it ran on; the job writes them to `output_dir/timeline.jsonl`
(seconds since the rollout source started). `busy_seconds` is how much of the wall
clock one kind of work covered, overlapping spans of that kind counted once, so
busy / wall says how well generation, scoring and learning overlap.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

TIMELINE_FILE = "timeline.jsonl"


class Timeline:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.spans: list[tuple[str, float, float, str]] = []  # kind, start, end, actor
        self._lock = threading.Lock()  # the driver and the rollout source's threads record

    def record(self, kind: str, start: float, end: float, actor: str) -> None:
        """A span between two `time.perf_counter()` readings on `actor` ("engine 0", "learner", ...)."""
        with self._lock:
            self.spans.append((kind, start - self.start, end - self.start, actor))

    def write(self, directory: Path) -> None:
        with self._lock:
            lines = [json.dumps({"kind": k, "start": round(s, 4), "end": round(e, 4), "actor": a})
                     for k, s, e, a in self.spans]
        (directory / TIMELINE_FILE).write_text("".join(line + "\n" for line in lines))


def read_spans(directory: Path) -> list[tuple[str, float, float]]:
    rows = [json.loads(line) for line in (directory / TIMELINE_FILE).read_text().splitlines()]
    return [(r["kind"], r["start"], r["end"]) for r in rows]


def busy_seconds(spans: list[tuple[str, float, float]], kind: str) -> float:
    """Length of the union of the spans of one kind."""
    total, covered_to = 0.0, float("-inf")
    for start, end in sorted((s, e) for k, s, e in spans if k == kind):
        if end > covered_to:
            total += end - max(start, covered_to)
            covered_to = end
    return total
