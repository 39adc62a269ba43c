"""The report's plotly figures: metric curves, where the step time went, the timeline, the faults.

Every curve figure draws each run in its own colour on shared axes, one small chart
per metric. A curve longer than `MAX_POINTS` is drawn from the means of consecutive
steps (`downsample`); a timeline with more than `MAX_SPANS` spans shows its first and
last spans. Both are said in the report.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from cispo.report.runs import Run
from cispo.rollout.timeline import busy_seconds

MAX_POINTS = 2000  # per curve
MAX_SPANS = 4000  # per timeline
FIRST_VIEW = 200  # spans in a timeline's opening view
LEGEND = {"orientation": "h", "yref": "container", "y": 1, "yanchor": "top", "x": 0}  # above the charts
COLUMNS = 3
RUN_COLOURS = qualitative.Plotly
KIND_COLOURS = {"generate": "#636efa", "episode": "#19d3f3", "score": "#00cc96", "learn": "#ef553b",
                "push": "#ab63fa"}
STEP_PARTS = {"perf/wait_s": ("waiting for groups", KIND_COLOURS["generate"]),  # they add up to perf/step_s
              "perf/learner_s": ("learner step", KIND_COLOURS["learn"]),
              "perf/push_s": ("weight push", KIND_COLOURS["push"])}


def run_colour(index: int) -> str:
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def matching(runs: list[Run], patterns: list[str], taken: set[str]) -> list[str]:
    """Metric keys of any run that match a pattern and no earlier section took, in pattern order."""
    keys = sorted({k for r in runs for k in r.metrics})
    out = [k for p in patterns for k in keys if re.match(p, k) and k not in taken]
    return list(dict.fromkeys(out))


def constant_value(runs: list[Run], key: str) -> float | None:
    """The one value `key` held at every step of every run, or None when it changed (a flat line needs no chart)."""
    values = {v for r in runs if key in r.metrics for v in r.metrics[key][1] if not math.isnan(v)}
    return values.pop() if len(values) == 1 else None


def downsample(steps: list[int], values: list[float]) -> tuple[np.ndarray, np.ndarray, int]:
    """At most MAX_POINTS points: the mean step and mean finite value of each run of `k` consecutive
    points; returns (x, y, k)."""
    x, y = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(x) <= MAX_POINTS:
        return x, y, 1
    k = math.ceil(len(x) / MAX_POINTS)
    pad = (-len(x)) % k
    x, y = np.pad(x, (0, pad), constant_values=np.nan), np.pad(y, (0, pad), constant_values=np.nan)
    with warnings.catch_warnings():  # a bucket of only NaN values stays NaN: a gap in the curve
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x.reshape(-1, k), axis=1), np.nanmean(y.reshape(-1, k), axis=1), k


def small_multiples(runs: list[Run], keys: list[str]) -> tuple[go.Figure, int]:
    """One chart per metric key, every run on it; the largest bucket `downsample` used."""
    rows = math.ceil(len(keys) / COLUMNS)
    fig = make_subplots(rows=rows, cols=COLUMNS, subplot_titles=keys, horizontal_spacing=0.06,
                        vertical_spacing=min(0.12, 0.5 / rows))
    largest, in_legend = 1, set()
    for i, key in enumerate(keys):
        for r, run in enumerate(runs):
            if key not in run.metrics:
                continue
            x, y, k = downsample(*run.metrics[key])
            largest = max(largest, k)
            fig.add_trace(go.Scatter(
                x=x.astype(np.float32), y=y.astype(np.float32), name=run.name, legendgroup=run.name,
                showlegend=len(runs) > 1 and run.name not in in_legend,
                mode="lines+markers" if len(x) < 30 else "lines",
                line={"color": run_colour(r), "width": 1.5}, marker={"size": 5},
                hovertemplate=f"{run.name}<br>step %{{x:.0f}}: %{{y:.4g}}<extra>{key}</extra>"),
                row=i // COLUMNS + 1, col=i % COLUMNS + 1)
            in_legend.add(run.name)
    fig.update_layout(height=max(300, 250 * rows), margin={"t": 60, "b": 30, "l": 50, "r": 20},
                      legend=LEGEND)
    fig.update_annotations(font_size=12)
    return fig, largest


def step_time(runs: list[Run]) -> go.Figure | None:
    """Each run's step seconds stacked as waiting + learner + push (they add up to perf/step_s)."""
    parts = [k for k in STEP_PARTS if any(k in r.metrics for r in runs)]
    if not parts:
        return None
    fig = make_subplots(rows=len(runs), cols=2, column_widths=[0.7, 0.3], shared_yaxes=False,
                        subplot_titles=[t for r in runs for t in (f"{r.name}: seconds per step", "mean seconds")])
    for i, run in enumerate(runs, 1):
        for part in parts:
            if part not in run.metrics:
                continue
            x, y, _ = downsample(*run.metrics[part])
            name, colour = STEP_PARTS[part]
            fig.add_trace(go.Scatter(x=x.astype(np.float32), y=y.astype(np.float32), stackgroup=f"run{i}",
                                     name=name, legendgroup=part, showlegend=i == 1,
                                     line={"color": colour, "width": 0.5},
                                     hovertemplate="step %{x:.0f}: %{y:.3f} s<extra>" + name + "</extra>"),
                          row=i, col=1)
        means = {name: float(np.nanmean(run.metrics[key][1])) for key, name in
                 [*((k, n) for k, (n, _) in STEP_PARTS.items()), ("perf/generate_s", "generating (engine s)"),
                  ("perf/reward_s", "scoring")] if key in run.metrics}
        fig.add_trace(go.Bar(x=list(means.values()), y=list(means), orientation="h", showlegend=False,
                             marker_color="#888", hovertemplate="%{y}: %{x:.3f} s<extra></extra>"), row=i, col=2)
    fig.update_yaxes(automargin=True)
    fig.update_layout(height=280 * len(runs) + 60, margin={"t": 50, "b": 30, "l": 50, "r": 20},
                      legend=LEGEND)
    return fig


def timeline(run: Run) -> tuple[go.Figure, str, str | None] | None:
    """A Gantt chart of the run's generate / score / learn / push spans, one lane per actor (calls in
    flight at once on separate lanes); a caption saying how busy each kind of work kept the wall
    clock; what was left out of the chart, if anything."""
    if not run.spans:
        return None
    spans = sorted(run.spans, key=lambda s: s["start"])
    wall = max(s["end"] for s in spans) - spans[0]["start"]
    triples = [(s["kind"], s["start"], s["end"]) for s in spans]
    present = {k for k, _, _ in triples}
    kinds = [*(k for k in KIND_COLOURS if k in present), *sorted(present - KIND_COLOURS.keys())]
    busy = ", ".join(f"{kind} {busy_seconds(triples, kind) / wall:.0%}" for kind in kinds) if wall > 0 else "-"
    caption = (f"{len(spans)} spans over {wall:.1f} s; busy share of the wall clock: {busy}. The view opens on "
               f"the first {min(FIRST_VIEW, len(spans))} spans: double-click the chart for all.")
    left_out = None
    if len(spans) > MAX_SPANS:
        half = MAX_SPANS // 2
        left_out = f"the first {half} and the last {half} spans drawn (the busy shares count all of them)"
        spans = spans[:half] + spans[-half:]
    lanes = _lanes(spans)
    shown_first = spans[:FIRST_VIEW]  # the opening view: the first spans; zoom out (double-click) for all
    fig = go.Figure()
    for kind in (k for k in kinds if any(s["kind"] == k for s in spans)):  # spans drawn may lack a kind
        mine = [(s, lane) for s, lane in zip(spans, lanes) if s["kind"] == kind]
        fig.add_trace(go.Bar(
            base=np.array([s["start"] for s, _ in mine], dtype=np.float32),
            x=np.array([max(s["end"] - s["start"], 1e-3) for s, _ in mine], dtype=np.float32),
            y=[lane for _, lane in mine], orientation="h", name=kind, opacity=1,
            marker={"color": KIND_COLOURS.get(kind, "#999"), "line": {"width": 0}},
            hovertemplate="%{y}: " + kind + " from %{base:.2f} s for %{x:.3f} s<extra></extra>"))
    order = sorted(set(lanes), key=_lane_order)
    fig.update_layout(barmode="overlay", bargap=0.25, height=120 + 28 * len(order),
                      margin={"t": 50, "b": 40, "l": 120, "r": 20},
                      xaxis={"title": "seconds since the rollout source started",
                             "range": [shown_first[0]["start"], max(s["end"] for s in shown_first)]},
                      yaxis={"categoryorder": "array", "categoryarray": order[::-1]},
                      legend=LEGEND)
    return fig, caption, left_out


def _lanes(spans: list[dict]) -> list[str]:
    """Each span's lane: its actor, numbered when spans of that actor overlap (several calls in flight)."""
    ends: dict[str, list[float]] = {}  # actor -> when each of its lanes is free
    out = []
    for s in spans:
        actor = s.get("actor") or s["kind"]  # timelines written before spans named their actor
        free = ends.setdefault(actor, [])
        slot = next((i for i, end in enumerate(free) if end <= s["start"]), len(free))
        if slot == len(free):
            free.append(0.0)
        free[slot] = s["end"]
        out.append(actor if slot == 0 else f"{actor} #{slot + 1}")
    return out


def _lane_order(lane: str) -> tuple:
    """The learner first, then the engines, then the rest; numbers in numeric order (engine 2 before engine 10)."""
    rank = 0 if lane.startswith("learner") else 1 if lane.startswith("engine") else 2
    return rank, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", lane)]


def staleness(runs: list[Run]) -> go.Figure | None:
    """How many samples were trained how many steps after the policy version that sampled them."""
    if not any(r.staleness for r in runs):
        return None
    fig = go.Figure()
    for i, run in enumerate(runs):
        ages = sorted(run.staleness)
        fig.add_trace(go.Bar(x=ages, y=[run.staleness[a] for a in ages], name=run.name, marker_color=run_colour(i),
                             hovertemplate="staleness %{x}: %{y} samples<extra>" + run.name + "</extra>"))
    fig.update_layout(barmode="group", height=260, margin={"t": 50, "b": 40, "l": 60, "r": 20},
                      xaxis={"title": "learner step - sampling policy version", "dtick": 1},
                      yaxis_title="samples", legend=LEGEND)
    return fig


def masked_causes(runs: list[Run]) -> go.Figure | None:
    """Samples masked from the loss, by cause, every run."""
    causes = sorted({c for r in runs for c in r.masked_by_cause})
    if not causes:
        return None
    fig = go.Figure()
    for i, run in enumerate(runs):
        fig.add_trace(go.Bar(y=causes, x=[run.masked_by_cause[c] for c in causes], orientation="h", name=run.name,
                             marker_color=run_colour(i),
                             hovertemplate="%{x} samples: %{y}<extra>" + run.name + "</extra>"))
    fig.update_layout(barmode="group", height=120 + 30 * len(causes) * len(runs), xaxis_title="samples masked",
                      margin={"t": 50, "b": 40, "l": 20, "r": 20}, yaxis={"automargin": True},
                      legend=LEGEND)
    return fig
