#!/usr/bin/env python
"""Write the Markdown report of an ablation grid from the runs stored in MLflow, or plan a grid.

    python report.py --grid deviations --out reports/deviations.md
    python report.py --grid fractional --profile cpu --tracking-uri sqlite:///results/mlflow.db \\
        --experiment answers-cpu --out results/fractional-cpu.md
    python report.py --plan --grid deviations --profile cpu --noise-from fractional \\
        --tracking-uri sqlite:///results/mlflow.db --experiment answers-cpu     # seeds to launch
    python report.py --claims fractional claims --profile cpu \\
        --tracking-uri sqlite:///results/mlflow.db --experiment answers-cpu     # the paper's claims, per grid

Plots go to a folder beside the report (reports/deviations.md -> reports/deviations/). The report
and plots are also logged to the grid's latest parent run (--no-log to skip). Reading never creates
a store or an experiment. Runs of different commits or precisions are not paired unless --pool.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ablations.runs import ReportError
from core.config import REPO, ConfigError
from core.tracking import DEFAULT_EXPERIMENT, TrackingError



def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="deviations", help="grid to report (default deviations)")
    ap.add_argument("--profile", help="profile to report (default: the grid's most recent)")
    ap.add_argument("--out", default="reports/report.md", help="Markdown file to write (default reports/report.md)")
    ap.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, else MLflow's default)")
    ap.add_argument("--commit", help="report only the runs made at this commit")
    ap.add_argument("--pool", action="store_true", help="pair runs across commits and precisions")
    ap.add_argument("--no-log", action="store_true", help="do not log the report to the parent MLflow run")
    ap.add_argument("--plan", action="store_true", help="print the seeds --grid needs, from the noise in the store")
    ap.add_argument("--noise-from", help="with --plan: the grid whose runs give the noise (default: --grid)")
    ap.add_argument("--effect", type=float, action="append",
                    help="with --plan: target effect in points (repeatable; default: the paper's claims)")
    ap.add_argument("--half-width", type=float, default=1.0,
                    help="with --plan on a factorial: target 95%% half-width of a main effect, points (default 1.0)")
    ap.add_argument("--claims", nargs="+", metavar="GRID",
                    help="print one table of the paper's claims as each of these grids measures them")
    ap.add_argument("--config", default=str(REPO / "experiments.yaml"), help="experiments file (for --plan)")
    return ap


def check_out(out: Path) -> None:
    if out.suffix != ".md":
        raise ConfigError(f"--out {out}: name a Markdown file ending in .md (its plots go to {out.with_suffix('')}/)")
    if out.is_dir() or out.with_suffix("").is_file():
        raise ConfigError(f"--out {out}: {out if out.is_dir() else out.with_suffix('')} is in the way; choose another name")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out)
    try:
        if not args.plan and not args.claims:
            check_out(out)
        from core.tracking import MlflowTracker
        tracker = MlflowTracker(args.experiment, args.tracking_uri, system_metrics=False, create=False)
        if args.plan:
            return plan(args, tracker)
        if args.claims:
            from ablations.report import claims_across
            print(claims_across(tracker, args.claims, args.profile, args.commit, args.pool,
                                shlex.join(["python", *sys.argv])))
            return 0
        from ablations.report import build, summary_metrics
        md, files, g = build(tracker, args.grid, out, args.profile, shlex.join(["python", *sys.argv]),
                             args.commit, args.pool)
    except (ConfigError, ReportError, TrackingError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md + "\n")
    if not args.no_log and g.parents:
        parent = max(g.parents, key=lambda r: r.start_ms or 0).run_id
        tracker.log_parent_files(parent, [str(out)] + [str(f) for f in files], "report")
        tracker.log_parent_metrics(parent, summary_metrics(g))
    print(f"wrote {out} ({len(g.cells)} cells, {g.cells['variant'].nunique()} variants, "
          f"{g.cells['seed'].nunique()} seeds{'; INCOMPLETE: see its header' if g.missing or g.running else ''}) "
          f"and {len(files)} plots in {out.with_suffix('')}/")
    return 0


def plan(args, tracker) -> int:
    from ablations import planner
    from ablations.grids import expand
    from ablations.runs import load
    from core.config import load_experiments
    experiments = load_experiments(args.config)
    variants = expand(experiments, args.grid)
    spec = experiments.grids[args.grid]
    design = str(len(variants)) if (spec.get("factorial") or spec.get("fraction")) else "paired"
    g = load(tracker, args.noise_from or args.grid, args.profile, args.commit, args.pool)
    effects = {f"{e:g} points": e / 100 for e in args.effect} if args.effect else planner.claimed_effects()
    from core.toggles import as_dict
    factors = sum(len({as_dict(v.toggles)[name] for v in variants}) > 1 for name in as_dict(variants[0].toggles))
    print(planner.plan(g, len(variants) - 1, design, effects, args.half_width / 100, factors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
