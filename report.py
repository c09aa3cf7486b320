#!/usr/bin/env python
"""Write the Markdown report of an ablation grid from the runs stored in MLflow.

    python report.py --grid deviations --out results.md
    python report.py --grid deviations --profile cpu --tracking-uri sqlite:///results/mlflow.db \
        --out results/deviations-cpu.md

Plots go to a folder beside the report (results.md -> results/). The report and plots are also
logged to the grid's latest parent run, with a summary metric per variant (--no-log to skip).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablations.report import ReportError, build, summary_metrics   # noqa: E402
from core.tracking import DEFAULT_EXPERIMENT                      # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="deviations", help="grid to report (default deviations)")
    ap.add_argument("--profile", help="profile to report (default: the grid's most recent)")
    ap.add_argument("--out", default="results.md", help="Markdown file to write (default results.md)")
    ap.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, else MLflow's default)")
    ap.add_argument("--no-log", action="store_true", help="do not log the report to the parent MLflow run")
    args = ap.parse_args(argv)
    from core.tracking import MlflowTracker
    tracker = MlflowTracker(args.experiment, args.tracking_uri, system_metrics=False)
    out = Path(args.out)
    try:
        md, files, g = build(tracker, args.grid, out, args.profile, shlex.join(["python", *sys.argv]))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md + "\n")
    if not args.no_log and not g.parents.empty:
        parent = g.parents.sort_values("start_time")["run_id"].iloc[-1]
        tracker.log_parent_files(parent, [str(out)] + [str(f) for f in files], "report")
        tracker.log_parent_metrics(parent, summary_metrics(g))
    print(f"wrote {out} ({len(g.cells)} runs, {g.cells['variant'].nunique()} variants, "
          f"{g.cells['seed'].nunique()} seeds) and {len(files)} plots in {out.with_suffix('')}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
