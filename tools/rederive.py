"""The primary analysis of a grid re-derived from an MLflow SQLite store by SQL, apart from the
report's code: a check of report.py's figures (and of the README's) that shares none of its
reading, pairing or statistics code.

    python -m tools.rederive results/mlflow.db --experiment answers-cpu --grid claims --profile cpu

It reads the store's tables directly (runs, tags, params, latest_metrics), takes per (variant, seed)
the latest FINISHED cell run of a one-at-a-time grid, pairs each variant with the grid's base variant by seed on the seeds
where both runs carry the tag `outcome=learned` (the engine's rule, logged by the run), and prints
per variant: pairs used and dropped, mean and SD of the differences of `val10_top1_err` in points,
the paired t-test's p, Holm's adjusted p over the grid's variants, and the t interval at the level
of the Holm step that decided it (README, Statistics). Only numpy and scipy's t distribution do the
arithmetic. Read-only: the store is opened with `mode=ro`.
"""
from __future__ import annotations

import argparse
import math
import sqlite3
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ALPHA = 0.05
METRIC = "val10_top1_err"

CELLS = """
SELECT r.run_uuid, r.start_time,
       MAX(CASE WHEN t.key = 'variant' THEN t.value END),
       MAX(CASE WHEN t.key = 'base_variant' THEN t.value END),
       MAX(CASE WHEN t.key = 'outcome' THEN t.value END),
       MAX(CASE WHEN t.key = 'git_commit' THEN t.value END),
       (SELECT value FROM params p WHERE p.run_uuid = r.run_uuid AND p.key = 'seed'),
       (SELECT value FROM latest_metrics m WHERE m.run_uuid = r.run_uuid AND m.key = ?)
FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
            JOIN tags t ON t.run_uuid = r.run_uuid
WHERE e.name = ? AND r.status = 'FINISHED' AND r.lifecycle_stage = 'active'
GROUP BY r.run_uuid
HAVING MAX(CASE WHEN t.key = 'role' THEN t.value END) = 'cell'
   AND MAX(CASE WHEN t.key = 'grid' THEN t.value END) = ?
   AND MAX(CASE WHEN t.key = 'profile' THEN t.value END) = ?
"""


def cells(db: Path, experiment: str, grid: str, profile: str, metric: str = METRIC) -> dict:
    """(variant, seed) -> (outcome, value, commit, base variant): the latest FINISHED run of each."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(CELLS, (metric, experiment, grid, profile)).fetchall()
    finally:
        con.close()
    out = {}
    for _, _, variant, base, outcome, commit, seed, value in sorted(rows, key=lambda r: r[1] or 0):
        out[(variant, int(seed))] = (outcome, value, commit, base)   # later runs replace earlier ones
    return out


def holm(ps: dict[str, float], alpha: float = ALPHA) -> dict[str, tuple[float, float]]:
    """variant -> (Holm-adjusted p, the level of the step that decided it)."""
    order = sorted(ps, key=ps.get)
    m, running, stopped, out = len(order), 0.0, None, {}
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * ps[k]))
        step = alpha / (m - i)
        if stopped is None and ps[k] > step:
            stopped = step
        out[k] = (running, 1 - (stopped if stopped is not None else step))
    return out


def analyse(table: dict) -> tuple[str, dict]:
    """The base variant and, per other variant, its learned-pair figures (in points)."""
    bases = {base for _, _, _, base in table.values() if base}
    base = bases.pop() if len(bases) == 1 else "baseline"
    seeds = {s for (v, s) in table if v == base}
    rows = {}
    for variant in sorted({v for v, _ in table} - {base}):
        diffs, dropped = [], 0
        for seed in sorted(s for (v, s) in table if v == variant and s in seeds):
            (o1, x1, *_), (o0, x0, *_) = table[(variant, seed)], table[(base, seed)]
            if o1 == "learned" and o0 == "learned" and x1 is not None and x0 is not None:
                diffs.append(100 * (x1 - x0))
            else:
                dropped += 1
        d = np.asarray(diffs)
        n = len(d)
        sd = float(d.std(ddof=1)) if n > 1 else math.nan
        p = float(2 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(n)), n - 1)) if n > 1 and sd > 0 else math.nan
        rows[variant] = {"n": n, "dropped": dropped, "mean": float(d.mean()) if n else math.nan, "sd": sd, "p": p}
    adjusted = holm({k: r["p"] for k, r in rows.items() if not math.isnan(r["p"])})
    for k, r in rows.items():
        r["p_holm"], r["level"] = adjusted.get(k, (math.nan, 1 - ALPHA / max(len(adjusted), 1)))
        half = (stats.t.ppf(0.5 + r["level"] / 2, r["n"] - 1) * r["sd"] / math.sqrt(r["n"])
                if not math.isnan(r["p"]) else math.nan)
        r["ci"] = (r["mean"] - half, r["mean"] + half)
    return base, rows


def markdown(base: str, rows: dict, table: dict) -> str:
    commits = sorted({c for _, _, c, _ in table.values()})
    lines = [f"base `{base}`; {len(table)} cells; commits {', '.join(commits)}", "",
             "| variant | pairs | dropped | mean Δ | SD | interval | level | p | Holm p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        lines.append(f"| `{k}` | {r['n']} | {r['dropped']} | {r['mean']:+.2f} | {r['sd']:.2f} | "
                     f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}] | {100 * r['level']:.1f}% | {r['p']:.2g} | {r['p_holm']:.2g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path, help="an MLflow SQLite file (e.g. results/mlflow.db)")
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--grid", required=True)
    ap.add_argument("--profile", required=True)
    args = ap.parse_args(argv)
    if not args.store.is_file():
        print(f"error: no store at {args.store}; pass the path of an MLflow SQLite file", file=sys.stderr)
        return 2
    table = cells(args.store, args.experiment, args.grid, args.profile)
    if not table:
        print(f"error: no FINISHED cell runs of grid {args.grid!r} on profile {args.profile!r} in experiment "
              f"{args.experiment!r} of {args.store}; check the three names", file=sys.stderr)
        return 2
    several = sorted({v for v, _ in table if "," in v})
    if several:
        print(f"error: grid {args.grid!r} has variants that change several toggles (`{several[0]}`): a factorial, "
              "whose fit is report.py's; this check re-derives one-at-a-time grids (claims, deviations)",
              file=sys.stderr)
        return 2
    print(markdown(*analyse(table), table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
