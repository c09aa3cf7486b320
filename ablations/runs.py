"""The read side of a grid: its cells as the store holds them, parsed into typed values, with what
is missing, still running, failed or duplicated. The report and the plots use only this (and the
tracker's read calls behind it), so a MemoryTracker can stand in for MLflow in tests.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from core import outcomes
from core.config import PAPER_EPOCHS
from core.toggles import REGISTRY
from .samecode import equivalents

METRICS = ("val10_top1_err", "val10_top5_err", "val_top1_err", "val_top5_err", "wall_time_s")


class ReportError(RuntimeError):
    """Nothing to report, or runs that must not be paired; the message names the fix."""


@dataclass
class GridRuns:
    grid: str
    profile: str
    base: str
    cells: pd.DataFrame                      # one row per (variant, seed): the FINISHED run used
    parents: list = field(default_factory=list)
    running: list = field(default_factory=list)     # cells still RUNNING (records)
    orphaned: list = field(default_factory=list)    # RUNNING, though the cell has a FINISHED run (records)
    stopped: list = field(default_factory=list)     # cells FAILED or KILLED (records)
    duplicates: list = field(default_factory=list)  # (config_hash, run used, [other FINISHED runs])
    missing: list = field(default_factory=list)     # "variant/seedK" without a FINISHED run
    superseded: int = 0                             # older config of a (variant, seed), left out
    groups: dict = field(default_factory=dict)      # (commit, precision) -> cells, before filtering
    pooled: bool = False
    same_code: dict = field(default_factory=dict)   # commit -> (the commit shown to train it identically, [run names])
    histories: dict = field(default_factory=dict)   # run_id -> {key: [(step, value)]}

    @property
    def variants(self) -> list[str]:
        order = list(dict.fromkeys(self.cells.sort_values(["seed", "start_ms"])["variant"]))
        return [self.base] + [v for v in order if v != self.base] if self.base in order else order

    @property
    def seeds(self) -> list[int]:
        return sorted(self.cells["seed"].unique())


def parse_toggles(params: dict[str, str]) -> dict:
    """Toggle values back to their registry types ("False" -> False, "2" -> 2). Runs logged before a
    toggle existed give None for it; runs that logged the epoch count as `epochs` give the choice
    they logged as `epochs_choice`."""
    out = {}
    for name, toggle in REGISTRY.items():
        raw = params.get("epochs_choice") if name == "epochs" and "epochs_choice" in params else params.get(name)
        out[name] = next((c for c in toggle.choices if str(c) == raw), None)
    return out


def _epochs_run(params: dict) -> int:
    return int(params.get("epochs_run") or params.get("epochs"))


def _outcome(rec, history: list[tuple[int, float]]) -> tuple[str, int]:
    """The outcome rule of core/outcomes.py on the stored history (the same rule for every run,
    also for runs logged before the rule existed)."""
    p = rec.params
    classes = int(p.get("num_classes", 10))
    if "epoch_scale" in p:
        scale = float(p["epoch_scale"])
    else:
        choice = parse_toggles(p)["epochs"] or "paper"
        scale = _epochs_run(p) / PAPER_EPOCHS[choice]
    curve = [v for _, v in sorted(history)]
    diverged = rec.tags.get("outcome") == "diverged"
    return outcomes.outcome(curve, classes, scale, diverged), outcomes.epochs_at_chance(curve, classes)


def load(tracker, grid: str, profile: str | None = None, commit: str | None = None, pool: bool = False) -> GridRuns:
    records = tracker.records(grid)
    cells = [r for r in records if r.tags.get("role") == "cell"]
    if not cells:
        raise ReportError(f"no runs of grid {grid!r} in experiment {tracker.experiment!r} at {tracker.uri}; "
                          f"run python run_ablation.py --grid {grid} first (or pass --experiment / --tracking-uri)")
    if profile is None:   # the profile of the most recent cell of this grid
        profile = max(cells, key=lambda r: r.start_ms or 0).tags.get("profile")
    cells = [r for r in cells if r.tags.get("profile") == profile]
    if not cells:
        raise ReportError(f"no runs of grid {grid!r} on profile {profile!r}")
    same_code = equivalents(cells)   # another commit's runs, copied once this grid's commit reproduced them
    same_as = {c: x for c, (x, _) in same_code.items()}
    code = lambda r: same_as.get(r.tags.get("git_commit", "?"), r.tags.get("git_commit", "?"))
    group = lambda r: (r.tags.get("git_commit", "?"), r.params.get("precision", "?"))
    groups = dict(Counter(group(r) for r in cells if r.status == "FINISHED"))
    paired = {(same_as.get(c, c), p) for c, p in groups}
    if commit:
        cells = [r for r in cells if commit in (r.tags.get("git_commit"), code(r))]
        if not cells:
            raise ReportError(f"no runs of grid {grid!r} at commit {commit}; commits in the store: "
                              + ", ".join(f"{c} ({p}, {n} runs)" for (c, p), n in groups.items()))
    elif len(paired) > 1 and not pool:
        raise ReportError(f"grid {grid!r} on {profile!r} holds runs of {len(groups)} commits or precisions, "
                          f"which are not paired by default: "
                          + ", ".join(f"{c} ({p}, {n} runs)" for (c, p), n in sorted(groups.items()))
                          + "; pass --commit C to report one, or --pool to pair across them")
    finished = sorted((r for r in cells if r.status == "FINISHED"), key=lambda r: r.start_ms or 0)
    if not finished:
        raise ReportError(f"grid {grid!r} on {profile!r} has no FINISHED run yet "
                          f"({len(cells)} runs: {dict(Counter(r.status for r in cells))})")
    by_hash: dict[str, list] = {}
    for r in finished:
        by_hash.setdefault(r.tags.get("config_hash", r.run_id), []).append(r)
    duplicates = [(h, rs[-1].run_id, [x.run_id for x in rs[:-1]]) for h, rs in by_hash.items() if len(rs) > 1]
    latest = {}
    for rs in by_hash.values():   # a profile edited between runs: the latest config of a (variant, seed)
        r = rs[-1]
        latest[(r.tags["variant"], int(r.params["seed"]))] = r
    superseded = len(by_hash) - len(latest)
    out = GridRuns(grid, profile, "", pd.DataFrame(), parents=[r for r in records if r.tags.get("role") == "grid"
                                                                and r.tags.get("profile") == profile],
                   running=[r for r in cells if r.status == "RUNNING" and r.tags.get("config_hash") not in by_hash],
                   orphaned=[r for r in cells if r.status == "RUNNING" and r.tags.get("config_hash") in by_hash],
                   stopped=[r for r in cells if r.status in ("FAILED", "KILLED")],
                   duplicates=duplicates, superseded=superseded, groups=groups,
                   pooled=pool and len(paired) > 1,
                   same_code=same_code)
    rows = []
    for (variant, seed), r in latest.items():
        hist = {k: tracker.history(r.run_id, k) for k in ("val_top1_err", "lr")}
        out.histories[r.run_id] = hist
        outcome, at_chance = _outcome(r, hist["val_top1_err"])
        rows.append({"run_id": r.run_id, "variant": variant, "seed": seed, "start_ms": r.start_ms or 0,
                     "config_hash": r.tags.get("config_hash"), "commit": r.tags.get("git_commit", "?"),
                     "precision": r.params.get("precision", "?"), "outcome": outcome,
                     "epochs_at_chance": at_chance, "epochs_run": _epochs_run(r.params),
                     "base_variant": r.tags.get("base_variant"), "params": r.params,
                     "reused_from": r.tags.get("reused_from"), "reused_from_grid": r.tags.get("reused_from_grid"),
                     **{f"t.{k}": v for k, v in parse_toggles(r.params).items()},
                     **{m: r.metrics.get(m, float("nan")) for m in METRICS}})
    out.cells = pd.DataFrame(rows).sort_values(["seed", "start_ms"]).reset_index(drop=True)
    bases = out.cells["base_variant"].dropna()
    out.base = bases.iloc[-1] if len(bases) else "baseline"
    seen_variants = {r.tags["variant"] for r in cells}
    seeds = sorted({int(r.params["seed"]) for r in cells})
    out.missing = sorted(f"{v}/seed{s}" for v in seen_variants for s in seeds if (v, s) not in latest)
    return out


def toggle_diff(g: GridRuns, variant: str) -> dict:
    """Toggles whose value differs between `variant` and the base variant."""
    row = g.cells[g.cells["variant"] == variant].iloc[0]
    base = g.cells[g.cells["variant"] == g.base]
    if base.empty:
        return {}
    base = base.iloc[0]
    return {t: row[f"t.{t}"] for t in REGISTRY if row[f"t.{t}"] != base[f"t.{t}"]}
