"""report.html: one self-contained page (plotly's JS inlined once, the data embedded) that opens offline."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from cispo.report import figures
from cispo.report.runs import MAX_SHOWN, Run, read_run

# (section title, what it shows, metric key patterns); every key lands in the first section that matches.
SECTIONS = [
    ("How it learned", "Training reward, held-out evaluation (greedy reward, pass@k) and the loss.",
     [r"reward/(mean|pass_rate)$", r"eval/(greedy|pass@)", r"learner/loss$"]),
    ("The update", "KL to the sampling policy, entropy, importance-sampling weights, clipping, gradient norm, "
                   "advantages.",
     [r"learner/(approx_kl|kl)", r"learner/entropy", r"learner/(is_weight|seq_ratio)", r"learner/(clip|masked)_frac",
      r"learner/grad_norm", r"learner/(advantage|zero_advantage)"]),
    ("Sampler vs learner", "Mismatch between the engine that sampled and the learner on the same tokens: probability "
                           "correlation and mean absolute difference (and routing agreement where a run logs it).",
     [r"learner/prob_", r"learner/routing"]),
    ("Rollouts", "Response lengths, finish reasons, staleness, dynamic sampling, environment statuses.",
     [r"rollout/", r"env/", r"reward/(std|overlong)"]),
    ("Throughput", "Seconds and samples per step.", [r"perf/"]),
    ("Faults", "Actors replaced after they died (cumulative) and samples whose scoring failed.",
     [r"faults/", r"reward/error", r"eval/errors"]),
    ("Everything else", "Every other metric the runs logged.", [r".*"]),
]
STYLE = """
body { font: 14px system-ui, sans-serif; margin: 0 2em 4em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
nav a { margin-right: 1em; } .note { color: #555; } table { border-collapse: collapse; }
td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; font-size: 13px; }
.sample-row { cursor: pointer; } .sample-row:hover, .opened { background: #eef; }
.filters label { margin-right: 1em; } .filters input { width: 6em; }
#samples-table { max-height: 420px; overflow: auto; display: block; margin: 0.5em 0; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 0.5em; max-height: 300px; overflow: auto; }
.response { font-family: monospace; white-space: pre-wrap; background: #fafafa; padding: 0.5em; line-height: 1.6; }
.tok { border-right: 1px dotted #ddd; } .observation { color: #777; font-style: italic; background: #eee; }
.error, .failed { color: #a00; } .passed { color: #080; }
"""


def write_report(run_dirs: list[str | Path], out_path: str | Path) -> Path:
    """Read the runs in `run_dirs` and write their report to `out_path`; returns its path."""
    dirs = [Path(d) for d in run_dirs]
    runs = [read_run(d, name) for d, name in zip(dirs, run_names(dirs))]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(runs), encoding="utf-8")
    tmp.replace(out)  # a browser never opens half a report
    return out


def run_names(dirs: list[Path]) -> list[str]:
    """Each directory's name, with its parent's where two names collide."""
    names = [d.resolve().name for d in dirs]
    return [f"{d.resolve().parent.name}/{n}" if names.count(n) > 1 else n for d, n in zip(dirs, names)]


def render(runs: list[Run]) -> str:
    notes = [f"{r.name}: {n}" for r in runs for n in r.notes]
    curves, taken, largest_bucket = {}, set(), 1
    for title, _, patterns in SECTIONS:  # every metric key in the first section that matches it
        keys = figures.matching(runs, patterns, taken)
        taken.update(keys)
        # The headline curves are drawn even when flat; elsewhere a flat metric is one line of text.
        curves[title], bucket = _curves(runs, keys, fold_constant=title != SECTIONS[0][0])
        largest_bucket = max(largest_bucket, bucket)
    before = {"Throughput": [_optional(figures.step_time(runs), "Where each step's time went: waiting for scored "
                                      "groups (what generation and scoring did not hide), the learner step, the "
                                      "weight push.")]}
    after = {"Faults": [_optional(figures.masked_causes(runs), "Samples masked from the loss, by cause (all samples "
                                  "of every step)."), _counts_table(runs)]}
    body = []
    for title, about, _ in SECTIONS:
        parts = [*before.get(title, []), *curves[title], *after.get(title, [])]
        if any(parts):
            body.append(_section(title, about, parts))
        if title == "How it learned":
            body.append(_timeline_section(runs, notes))
    body.append(_samples_section(runs))
    if largest_bucket > 1:
        notes.append(f"curves longer than {figures.MAX_POINTS} points show the mean of each run of up to "
                     f"{largest_bucket} consecutive steps (hover shows the mean step)")
    return _page(runs, notes, body)


def _curves(runs: list[Run], keys: list[str], fold_constant: bool) -> tuple[list[str], int]:
    """A chart per metric (with `fold_constant`, per metric that changed, and a line naming those that did
    not); the largest downsampling bucket."""
    constant = {k: v for k in keys if fold_constant and (v := figures.constant_value(runs, k)) is not None}
    parts, bucket = [], 1
    if len(constant) < len(keys):
        fig, bucket = figures.small_multiples(runs, [k for k in keys if k not in constant])
        parts.append(_figure(fig))
    if constant:
        parts.append("<p class=note>Unchanged through the run: " + html.escape(", ".join(
            f"{k} = {v:.6g}" for k, v in constant.items())) + "</p>")
    return parts, bucket


def _figure(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


def _optional(fig: go.Figure | None, caption: str) -> str:
    return "" if fig is None else f"<p class=note>{html.escape(caption)}</p>{_figure(fig)}"


def _section(title: str, about: str, parts: list[str]) -> str:
    anchor = title.lower().replace(" ", "-")
    return (f"<section id={anchor}><h2>{html.escape(title)}</h2><p class=note>{html.escape(about)}</p>"
            f"{''.join(parts)}</section>")


def _timeline_section(runs: list[Run], notes: list[str]) -> str:
    parts = []
    for run in runs:
        drawn = figures.timeline(run)
        if drawn is None:
            parts.append(f"<p class=note>{html.escape(run.name)}: no timeline.jsonl</p>")
            continue
        fig, caption, left_out = drawn
        if left_out:
            notes.append(f"{run.name}: timeline: {left_out}")
            caption += f" Here: {left_out}."
        parts.append(f"<h3>{html.escape(run.name)}</h3><p class=note>{html.escape(caption)}</p>{_figure(fig)}")
    parts.append(_optional(figures.staleness(runs), "Staleness of every trained sample: the learner step that "
                                                    "trained it minus the policy version that sampled it."))
    return _section("Timeline", "Every generate, score, learn and push span, one lane per actor: where work "
                    "overlapped and where it waited.", parts)


def _counts_table(runs: list[Run]) -> str:
    rows = [("samples trained", [r.samples for r in runs])]
    for label, counter in [("finish", "finish_reasons"), ("status", "statuses"), ("masked", "masked_by_cause")]:
        for key in sorted({k for r in runs for k in getattr(r, counter)}):
            rows.append((f"{label}: {key}", [getattr(r, counter)[key] for r in runs]))
    for key in ("faults/rollout_restarts", "faults/reward_worker_restarts", "faults/learner_restarts"):
        rows.append((key.split("/")[1].replace("_", " "),
                     [int(r.metrics[key][1][-1]) if key in r.metrics else "-" for r in runs]))
    head = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
    cells = "".join(f"<tr><td>{html.escape(label)}</td>{''.join(f'<td>{v}</td>' for v in values)}</tr>"
                    for label, values in rows)
    return f"<table class=counts><tr><th></th>{head}</tr>{cells}</table>"


def _samples_section(runs: list[Run]) -> str:
    shown = [{"run": r.name, **s} for r in runs for s in r.shown]
    data = json.dumps(_json_safe(shown), default=str).replace("<", "\\u003c")  # nothing in it closes the script
    browser_js = (Path(__file__).with_name("browser.js")).read_text()
    about = (f"The samples each job kept token by token: the first logger.table_rows samples of every "
             f"logger.table_every-th step (the rows of the W&B sample table), at most {MAX_SHOWN} per run. Each "
             "response token is shaded by the sampler's probability of it (darker: less likely) or by the sample's "
             "advantage (green positive, red negative); grey italic tokens are environment output, not trained. "
             "Per-token learner probabilities are not recorded, so the sampler-vs-learner gap is shown per step "
             "under Sampler vs learner. Hover a token for its probability and policy version.")
    filters = """<div class=filters>
<label>run <select id=f-run><option value="">all</option></select></label>
<label>step <input id=f-step-min type=number placeholder=from> -
<input id=f-step-max type=number placeholder=to></label>
<label>reward <input id=f-reward-min type=number step=any placeholder=min> -
<input id=f-reward-max type=number step=any placeholder=max></label>
<label>status <select id=f-status><option value="">all</option></select></label>
<label>shade by <input type=radio name=shade value=prob checked> sampler probability
<input type=radio name=shade value=advantage> advantage</label></div>"""
    head = "".join(f"<th>{h}</th>" for h in ("run", "step", "reward", "advantage", "finish", "status", "version",
                                             "tokens", "response"))
    return _section("Samples", about, [
        filters, "<p id=samples-count class=note></p>",
        f"<table id=samples-table><thead><tr>{head}</tr></thead><tbody id=samples-rows></tbody></table>",
        "<div id=sample-detail></div>",
        f"<script type=application/json id=samples-data>{data}</script><script>{browser_js}</script>"])


def _page(runs: list[Run], notes: list[str], body: list[str]) -> str:
    title = "cispo run report: " + ", ".join(r.name for r in runs)
    summary = "".join(
        f"<tr><td>{html.escape(r.name)}</td><td>{html.escape(str(r.directory.resolve()))}</td>"
        f"<td>{max((steps[-1] for steps, _ in r.metrics.values()), default=0)}</td><td>{r.samples}</td>"
        f"<td>{_last(r, 'reward/mean')}</td>"
        f"<td>{_last(r, 'eval/greedy_reward')}</td><td>{_total(r, 'perf/step_s')}</td></tr>" for r in runs)
    sampled = ("".join(f"<li>{html.escape(n)}</li>" for n in notes)
               or "<li>nothing: every point, span and kept sample is here</li>")
    nav = "".join(f"<a href=#{t.lower().replace(' ', '-')}>{t}</a>" for t in
                  ["How it learned", "Timeline", "The update", "Sampler vs learner", "Rollouts", "Throughput",
                   "Faults", "Samples"])
    return f"""<!DOCTYPE html>
<html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{STYLE}</style>
<script>{get_plotlyjs()}</script></head><body>
<h1>{html.escape(title)}</h1>
<p class=note>Written {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())} by <code>cispo-train report</code>.</p>
<table><tr><th>run</th><th>directory</th><th>steps</th><th>samples</th><th>last reward</th><th>last greedy eval</th>
<th>step seconds, total</th></tr>{summary}</table>
<h3>What this report sampled or left out</h3><ul id=sampled>{sampled}</ul>
<nav>{nav}</nav>
{''.join(body)}
</body></html>
"""


def _json_safe(value):
    """`value` with NaN and infinities as null: JSON.parse accepts no other spelling of them."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _last(run: Run, key: str) -> str:
    values = run.metrics.get(key, ([], []))[1]
    finite = [v for v in values if np.isfinite(v)]
    return f"{finite[-1]:.4g}" if finite else "-"


def _total(run: Run, key: str) -> str:
    values = run.metrics.get(key, ([], []))[1]
    return f"{np.nansum(values):.1f}" if values else "-"
