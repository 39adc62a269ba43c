"""See a run: `cispo-train report OUTPUT_DIR [OUTPUT_DIR ...]` writes one self-contained report.html.

`runs` reads a job's output directory (metrics.jsonl, trained_samples.jsonl,
timeline.jsonl) into bounded aggregates, `figures` draws them with plotly, `page`
writes the HTML (plotly's JS inlined once, a sample browser in plain JS), so the
file opens offline with no server. Every job writes `output_dir/report.html` at
each checkpoint and at its end.
"""

from __future__ import annotations

import argparse
import sys

from cispo.report.page import write_report
from cispo.report.runs import NotARunError

__all__ = ["write_report", "main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cispo-train report",
        description="Write one self-contained report.html of one or more runs (several: curves on shared axes).")
    parser.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR", help="a job's trainer.output_dir")
    parser.add_argument("--out", help="where to write it (default: OUTPUT_DIR/report.html for one run, "
                                      "./report.html for several)")
    args = parser.parse_args(argv)
    out = args.out or (f"{args.output_dirs[0]}/report.html" if len(args.output_dirs) == 1 else "report.html")
    try:
        path = write_report(args.output_dirs, out)
    except NotARunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path.resolve()}")
    return 0
