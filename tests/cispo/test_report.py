"""The run report: bounded for big runs, several runs on shared axes, and a real job's report checked in Chromium."""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cispo.report import write_report
from cispo.report.figures import MAX_POINTS

CISPO_TRAIN = Path(sys.executable).parent / "cispo-train"
METRIC_KEYS = ["reward/mean", "reward/pass_rate", "learner/loss", "learner/approx_kl", "learner/entropy",
               "learner/is_weight_mean", "learner/clip_frac_high", "learner/prob_corr", "learner/prob_abs_diff",
               "perf/wait_s", "perf/learner_s", "perf/push_s", "perf/step_s", "rollout/staleness_mean",
               "faults/rollout_restarts", "reward/errors"]


def write_synthetic_run(out: Path, steps: int, samples_per_step: int, shown_every: int = 10, shown: int = 8,
                        tokens: int = 200) -> Path:
    """A run directory as a job leaves it, written fast: metrics, trained samples (every `shown_every`-th
    step keeps `shown` samples of `tokens` tokens each) and an async timeline."""
    out.mkdir(parents=True)
    rng = random.Random(0)
    with open(out / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            row = {"step": step, **{k: round(rng.random(), 4) for k in METRIC_KEYS}}
            if step % 100 == 0:
                row["eval/greedy_reward"] = step / steps
            f.write(json.dumps(row) + "\n")
    errors = ["TimeoutError: reward fn ran past 5 s"] + [None] * (samples_per_step - 1)
    graded = {"status": "resolved", "tests": {"test_mean": "passed", "test_empty": "failed"},  # as the SWE reward
              "transcript": [{"role": "assistant", "text": "<tool_call>{...}</tool_call>"},  # as an agent episode
                             {"role": "tool", "text": "x" * 5000}]}
    fixed = (f'"rewards": {json.dumps([float(i % 2) for i in range(samples_per_step)])}, '
             f'"reward_details": {json.dumps([graded] + [{"status": "resolved"}] * (samples_per_step - 1))}, '
             f'"reward_errors": {json.dumps(errors)}, "version_spans": {json.dumps([[]] * samples_per_step)}, '
             f'"finish_reasons": {json.dumps(["stop"] * samples_per_step)}, '
             f'"advantages": {json.dumps([round(i / samples_per_step - 0.5, 4) for i in range(samples_per_step)])}')
    example = json.dumps({"prompt": "7+5=" * 20, "tokens": ["1", "2", " <eos>"] * (tokens // 3),
                          "logprobs": [-0.05, -1.2, -0.3] * (tokens // 3), "loss_mask": [1, 1, 0] * (tokens // 3)})
    with open(out / "trained_samples.jsonl", "w") as f:
        for step in range(1, steps + 1):
            ids = json.dumps([f"s{step}-{i}" for i in range(samples_per_step)])
            versions = json.dumps([step - 1 - (i % 2) for i in range(samples_per_step)])
            extra = f', "shown": [{", ".join([example] * shown)}]' if step % shown_every == 1 else ""
            f.write(f'{{"step": {step}, "learner_step": {step - 1}, "prompt_indices": [], "sample_ids": {ids}, '
                    f'"policy_versions": {versions}, {fixed}{extra}}}\n')
    with open(out / "timeline.jsonl", "w") as f:
        for step in range(steps):
            t = step * 1.0
            for engine in range(4):
                span = {"kind": "generate", "start": t, "end": t + 0.8, "actor": f"engine {engine}"}
                f.write(json.dumps(span) + "\n")
            f.write(json.dumps({"kind": "score", "start": t + 0.8, "end": t + 0.9, "actor": "reward workers"}) + "\n")
            f.write(json.dumps({"kind": "learn", "start": t + 0.2, "end": t + 0.7, "actor": "learner"}) + "\n")
            f.write(json.dumps({"kind": "push", "start": t + 0.7, "end": t + 0.75, "actor": "learner"}) + "\n")
    return out


def plotly_figures(page: str) -> list[dict]:
    """The (data, layout) of every figure in a report, as its Plotly.newPlot call holds them."""
    decoder, out = json.JSONDecoder(), []
    for call in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', page):
        data, end = decoder.raw_decode(page, call.end())
        layout, _ = decoder.raw_decode(page, re.compile(r",\s*").match(page, end).end())
        out.append({"data": data, "layout": layout})
    return out


@pytest.mark.slow
def test_a_ten_thousand_step_run_with_a_million_samples_gives_a_small_report(tmp_path):
    run = write_synthetic_run(tmp_path / "big", steps=10_000, samples_per_step=100)
    started = time.perf_counter()
    out = write_report([run], tmp_path / "report.html")
    seconds = time.perf_counter() - started
    size = out.stat().st_size
    print(f"10,000 steps, 1,000,000 samples: report {size / 1e6:.1f} MB in {seconds:.1f} s")
    assert size < 20e6
    page = out.read_text()
    sampled = page.split('<ul id=sampled>')[1].split("</ul>")[0]
    assert f"curves longer than {MAX_POINTS} points show the mean of each run of up to 5 consecutive steps" in sampled
    assert "600 of the 8000 samples kept token by token, from 75 steps" in sampled
    assert "the first 2000 and the last 2000 spans drawn" in sampled
    assert "70000 spans" in page and "busy share of the wall clock: generate 80%" in page  # counted from all spans
    figures = plotly_figures(page)
    assert figures and all(len(_values(trace["x"])) <= MAX_POINTS for fig in figures for trace in fig["data"]
                           if trace.get("type") == "scatter")
    # Every sample counted: one masked per step, grouped by cause.
    assert "<tr><td>masked: TimeoutError: reward fn ran past N s</td><td>10000</td></tr>" in page


def _values(array) -> list:
    """A plotly array as the page holds it: a list, or {"dtype", "bdata"} base64 typed data."""
    if isinstance(array, dict):
        return list(np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]))
    return array


def test_several_runs_share_axes_and_a_malformed_line_is_skipped_and_counted(tmp_path):
    first = write_synthetic_run(tmp_path / "a" / "run", steps=30, samples_per_step=4)
    second = write_synthetic_run(tmp_path / "b" / "run", steps=20, samples_per_step=4)
    with open(second / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "reward/mean": 0.\n')  # a job killed mid-line
    res = subprocess.run([str(CISPO_TRAIN), "report", str(first), str(second), "--out", str(tmp_path / "both.html")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"report: {tmp_path / 'both.html'}"
    page = (tmp_path / "both.html").read_text()
    assert f"b/run: {second / 'metrics.jsonl'}: 1 malformed line(s) skipped, the first at line 21" in page
    reward = next(fig for fig in plotly_figures(page) if "reward/mean" in json.dumps(fig["layout"]))
    names = {t["name"] for t in reward["data"] if t["xaxis"] == reward["data"][0]["xaxis"]}
    assert names == {"a/run", "b/run"}  # both runs on the reward chart's axes

    missing = subprocess.run([str(CISPO_TRAIN), "report", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no metrics.jsonl there" in missing.stderr


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium with no network: every host name fails to resolve."""
    assert shutil.which("chromium"), "Debian's chromium is missing: scripts/setup.sh installs it"
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=timeout)


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to its console, errors and uncaught exceptions included (Chromium logs them all as
    INFO:CONSOLE, so any message counts: the report's own code logs none)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def rendered_dom(report: Path) -> str:
    res = chromium("--virtual-time-budget=20000", "--dump-dom", report.resolve().as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    assert console_messages(res.stderr) == []
    return res.stdout


@pytest.mark.slow
def test_a_real_async_jobs_report_renders_offline_in_chromium(ray_session, job_config, capsys):
    from cispo.supervise import run_job

    cfg = job_config(trainer__steps=3, trainer__save_every=2, trainer__max_staleness=1, logger__table_every=1,
                     logger__table_rows=6)
    run_job(cfg)
    lines = capsys.readouterr().out.strip().splitlines()
    report = Path(cfg.trainer.output_dir).resolve() / "report.html"
    assert lines[-2] == f"report: {report}" and lines[-1].startswith("summary: steps=3")
    print(f"real run: report {report.stat().st_size / 1e6:.2f} MB")

    started = time.perf_counter()
    dom = rendered_dom(report)
    print(f"chromium rendered it in {time.perf_counter() - started:.1f} s")
    # Self-contained: nothing to load from anywhere (Chromium logs no console message for a failed load).
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=", report.read_text())
    for section in ("how-it-learned", "timeline", "the-update", "sampler-vs-learner", "throughput"):
        body = dom.split(f'<section id="{section}">')[1].split("</section>")[0]
        assert body.count('class="main-svg"') >= 2, section  # a plotly figure drew its SVG layers
    faults = dom.split('<section id="faults">')[1].split("</section>")[0]
    assert "<td>samples trained</td><td>48</td>" in faults and "<td>rollout restarts</td><td>0</td>" in faults
    timeline = dom.split('<section id="timeline">')[1].split("</section>")[0]
    assert "engine 0" in timeline and "learner" in timeline and "reward workers" in timeline  # its lanes
    rows = re.findall(r'<tr class="sample-row[^"]*">', dom)
    assert len(rows) == 3 * 6  # every shown sample of the 3 steps is listed
    detail = dom.split('<div id="sample-detail">')[1]
    assert detail.count('class="tok') >= 1 and "prompt" in detail  # the first sample opened, token by token


@pytest.mark.slow
def test_the_big_report_opens_in_chromium_in_seconds(tmp_path):
    run = write_synthetic_run(tmp_path / "big", steps=10_000, samples_per_step=100)
    report = write_report([run], tmp_path / "report.html")
    started = time.perf_counter()
    dom = rendered_dom(report)
    seconds = time.perf_counter() - started
    print(f"chromium loaded the 10,000-step report in {seconds:.1f} s")
    assert dom.count('class="main-svg"') > 10 and len(re.findall(r'<tr class="sample-row', dom)) == 300
    # The first sample opened: its grade per test, and environment output set apart from the model's tokens.
    assert '<td class="passed">passed</td>' in dom and '<td class="failed">failed</td>' in dom
    assert dom.count('class="tok observation"') == 200 // 3
    # An agent episode's transcript, each message cut to its head and tail.
    assert 'class="turn assistant"' in dom and 'class="turn tool"' in dom and "3000 characters left out" in dom
    assert seconds < 60
