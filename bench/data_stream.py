"""A large dataset feeding a job: time to the first RL step and the driver's peak RSS.

Writes a JSONL of `--rows` rows (2 million by default, about 1 GB: sums with a filler
sentence, a third of them chat messages), then measures side by side in one run:

- the job (`task=dataset task.path=FILE`, the default hybrid policy, 1 RL step, no
  warm-up) as a subprocess: seconds from start to its first RL step's metrics line, and
  the driver process's peak RSS, against the same job on a 1,000-row file (the file's
  share of the RSS is the difference: the driver's imports alone take several hundred MB);
- loading the same file fully into a Python list (`json.loads` of every line), as a
  subprocess: seconds and RSS growth.

Goal: first step in under 30 s and RSS growth under 300 MB, whatever the file size.

    .venv/bin/python bench/data_stream.py [--rows 2000000] [--keep FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CISPO_TRAIN = Path(sys.executable).parent / "cispo-train"
FILLER = "lorem ipsum dolor sit amet " * 14
LOAD_ALL = """
import json, resource, sys, time
start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
with open(sys.argv[1]) as f:
    rows = [json.loads(line) for line in f]
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": len(rows),
                  "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss) / 1024}))
"""


def write_rows(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(rows):
            a, b = rng.randint(0, 10**6), rng.randint(0, 10**6)
            question = f"What is {a}+{b}? {FILLER}"
            prompt = ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
                      if i % 3 == 0 else question)
            f.write(json.dumps({"prompt": prompt, "answer": str(a + b), "id": i}) + "\n")


def rss_kb(pid: int) -> int:
    """Resident set size of one process, in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_job(data: Path, out: Path) -> dict:
    """The job as a user runs it; the driver's RSS is sampled every 50 ms until the first step is logged."""
    args = [str(CISPO_TRAIN), "task=dataset", f"task.path={data}", "task.eval_size=16", "trainer.steps=1",
            "trainer.sft_steps=0", "trainer.save_every=0", f"trainer.output_dir={out}", "logger.mode=disabled",
            "logger.progress_bar=false", "model.max_position_embeddings=512"]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, first_step = 0, None
    metrics = out / "metrics.jsonl"
    while proc.poll() is None:
        peak = max(peak, rss_kb(proc.pid))
        if first_step is None and metrics.exists() and '"reward/mean"' in metrics.read_text():
            first_step = time.perf_counter() - start
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"the job failed:\n{proc.stderr.read()[-3000:]}")
    return {"first_step_s": first_step, "rss_peak_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--keep", type=Path, help="write (or reuse) the JSONL here instead of a temporary file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="data_stream_") as tmp:
        data = args.keep or Path(tmp) / "rows.jsonl"
        if not data.exists():
            t0 = time.perf_counter()
            write_rows(data, args.rows)
            print(f"wrote {args.rows} rows, {data.stat().st_size / 2**30:.2f} GiB, in {time.perf_counter() - t0:.0f} s")
        small = Path(tmp) / "small.jsonl"
        write_rows(small, 1000)
        reference = run_job(small, Path(tmp) / "small_run")
        job = run_job(data, Path(tmp) / "run")
        loaded = json.loads(subprocess.run([sys.executable, "-c", LOAD_ALL, str(data)], capture_output=True,
                                           text=True, check=True).stdout)
    growth = job["rss_peak_mb"] - reference["rss_peak_mb"]
    print(f"\n{'':<34} {'seconds':>9} {'RSS growth MB':>14}")
    print(f"{'job, 1,000 rows: to first step':<34} {reference['first_step_s']:>9.1f} {0:>14.0f}")
    print(f"{'job, this file: to first step':<34} {job['first_step_s']:>9.1f} {growth:>14.0f}")
    print(f"{'python list of every row':<34} {loaded['seconds']:>9.1f} {loaded['rss_growth_mb']:>14.0f}")
    print(f"\nthe file adds {job['first_step_s'] - reference['first_step_s']:+.1f} s to the first step (the rest is "
          f"the job's start: Ray, the actors, the policy); the list holds "
          f"{loaded['rss_growth_mb'] / max(growth, 1):.1f}x the job's RSS growth; "
          f"goal: first step < 30 s ({'met' if job['first_step_s'] < 30 else 'NOT met'}), "
          f"RSS growth < 300 MB ({'met' if growth < 300 else 'NOT met'})")


if __name__ == "__main__":
    main()
