"""Build the Markdown report of a grid from the runs stored in MLflow (never from the runner).

Sections: header (profile, dataset, seeds, commit, date, commands); the results table (one row per
variant: mean +- std with n, difference from the base variant); paired effects per toggle with
intervals, tests (Holm-corrected) and verdicts; the paper's claims; factorial effects where the
grid is a factorial; plots; the run ids behind every number.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.toggles import REGISTRY
from .stats import Effect, claim_status, factorial_effects, holm, paired_effect, verdict

ERRORS = ("val10_top1_err", "val10_top5_err", "val_top1_err", "val_top5_err")
PUBLISHED = [  # ILSVRC-2012 val, 10-crop, error (alexnet-facts.md)
    ("paper (Krizhevsky et al. 2012), 90 epochs", 0.407, 0.182),
    ("seed reproduction, 90 epochs", 0.467, 0.2269),
    ("seed reproduction, 120 epochs", 0.417, 0.193),
]
# The paper's claims as (flip, claimed increase in top-1, in top-5) when the deviation is applied.
CLAIMS = [
    ("LRN (§3.3): no LRN raises error", {"lrn": "False"}, 0.014, 0.012),
    ("overlapping pooling (§3.4): z=2 raises error", {"overlap_pool": "False"}, 0.004, 0.003),
    ("PCA lighting (§4.1): none raises top-1 by over 1%", {"pca": "none"}, 0.01, None),
    ("epochs (seed): 120 instead of 90 lowers error (seed: 46.7% -> 41.7%)", {"epochs": "seed"}, -0.05, -0.0339),
]


class ReportError(RuntimeError):
    pass


@dataclass
class GridRuns:
    grid: str
    profile: str
    cells: pd.DataFrame           # one row per (variant, seed): its latest FINISHED run
    parents: pd.DataFrame
    base: str
    histories: dict = field(default_factory=dict)   # run_id -> {key: [(step, value)]}
    superseded: int = 0           # older runs of a (variant, seed) under another config_hash, left out


def load(tracker, grid: str, profile: str | None = None) -> GridRuns:
    runs = tracker.runs(status="FINISHED", filter_string=f"tags.grid = '{grid}'")
    if runs.empty:
        raise ReportError(f"no finished runs of grid {grid!r} in experiment {tracker.experiment!r} at "
                          f"{tracker.client.tracking_uri}; run python run_ablation.py --grid {grid} first "
                          f"(or pass --experiment / --tracking-uri)")
    cells = runs[runs["tags.role"] == "cell"]
    parents = runs[runs["tags.role"] == "grid"]
    if profile is None:   # the profile of the most recent run of this grid
        profile = cells.sort_values("start_time")["tags.profile"].iloc[-1]
    cells = cells[cells["tags.profile"] == profile]
    if cells.empty:
        raise ReportError(f"no finished runs of grid {grid!r} on profile {profile!r}")
    cells = cells.sort_values("start_time").drop_duplicates("tags.config_hash", keep="last")
    cells = cells.assign(seed=cells["params.seed"].astype(int), variant=cells["tags.variant"])
    # a profile edited between runs gives a (variant, seed) a second config_hash: the latest counts
    latest = cells.drop_duplicates(["variant", "seed"], keep="last")
    superseded, cells = len(cells) - len(latest), latest
    base = cells["tags.base_variant"].dropna().iloc[-1] if "tags.base_variant" in cells and \
        cells["tags.base_variant"].notna().any() else "baseline"
    out = GridRuns(grid, profile, cells.reset_index(drop=True), parents[parents["tags.profile"] == profile], base,
                   superseded=superseded)
    for run_id in out.cells["run_id"]:
        out.histories[run_id] = {k: tracker.history(run_id, k) for k in ("val_top1_err", "lr")}
    return out


def variant_order(g: GridRuns) -> list[str]:
    order = list(dict.fromkeys(g.cells.sort_values(["seed", "start_time"])["variant"]))
    return [g.base] + [v for v in order if v != g.base] if g.base in order else order


def flips(g: GridRuns, variant: str) -> dict[str, str]:
    """Toggle params that differ between `variant` and the base variant (from logged params)."""
    row = g.cells[g.cells["variant"] == variant].iloc[0]
    if g.base not in set(g.cells["variant"]):
        return {}
    base = g.cells[g.cells["variant"] == g.base].iloc[0]
    # the `epochs` param is the real count; the toggle's value is logged as epochs_choice
    col = lambda t: "params.epochs_choice" if t == "epochs" and "params.epochs_choice" in row else f"params.{t}"
    return {t: row[col(t)] for t in REGISTRY if col(t) in row and row[col(t)] != base[col(t)]}


def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def mean_std(values: pd.Series) -> str:
    v = values.dropna().astype(float)
    if v.empty:
        return "n/a"
    return f"{pct(v.mean())} ± {pct(v.std(ddof=1)) if len(v) > 1 else '–'} (n={len(v)})"


def paired(g: GridRuns, variant: str, metric: str) -> np.ndarray:
    """variant - base differences of `metric`, matched by seed."""
    col = f"metrics.{metric}"
    a = g.cells[g.cells["variant"] == variant].set_index("seed")[col]
    b = g.cells[g.cells["variant"] == g.base].set_index("seed")[col]
    both = a.index.intersection(b.index)
    d = (a.loc[both] - b.loc[both]).astype(float)
    return d.dropna().to_numpy()


def effects(g: GridRuns, metric: str) -> dict[str, Effect]:
    """Paired effect of every non-base variant on `metric`, Holm-corrected across the grid."""
    return holm({v: paired_effect(paired(g, v, metric)) for v in variant_order(g) if v != g.base})


# ------------------------------------------------------------------------------------------ rendering
def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _diff(e: Effect) -> str:
    if e.n == 0 or math.isnan(e.mean):
        return "n/a"
    ci = "" if math.isnan(e.ci[0]) else f" [{100 * e.ci[0]:+.1f}, {100 * e.ci[1]:+.1f}]"
    return f"{100 * e.mean:+.1f}{ci}"


def _p(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def header(g: GridRuns, tracker, command: str) -> str:
    c = g.cells.iloc[0]
    seeds = sorted(g.cells["seed"].unique())
    commits = ", ".join(sorted(g.cells["tags.git_commit"].dropna().unique())) if "tags.git_commit" in g.cells else "?"
    started, ended = g.cells["start_time"].min(), g.cells["end_time"].max()
    cmds = list(dict.fromkeys(g.parents["tags.command"].dropna())) if "tags.command" in g.parents else []
    lines = [f"# Ablation report: grid `{g.grid}`, profile `{g.profile}`", "",
             f"- **Profile** `{g.profile}`: dataset {c['params.dataset']} ({c['params.train_images']} train / "
             f"{c['params.val_images']} val images), {c['params.image_size']} px crops of {c['params.prep_size']} px "
             f"images, width {c['params.width']}, batch {c['params.batch_size']}, lr {c['params.lr']}, "
             f"device {c.get('params.device', '?')}, precision {c.get('params.precision', '?')}",
             f"- **Seeds**: {len(seeds)} ({', '.join(map(str, seeds))}); each number below says its n",
             f"- **Runs**: {len(g.cells)} finished cells, trained {started:%Y-%m-%d %H:%M} to {ended:%Y-%m-%d %H:%M} UTC "
             f"at git commit {commits}" + (f"; {g.superseded} older run(s) of the same variant and seed under another "
                                           f"config (the profile changed) left out" if g.superseded else ""),
             f"- **MLflow**: `{tracker.client.tracking_uri}`, experiment `{tracker.experiment}`; "
             f"run ids of every number at the end",
             f"- **Report generated** {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
             "", "Commands that made it:", "", "```"] + cmds + [command, "```", "",
             "> Errors are fractions shown in %, from the val split (Imagenette has no separate test split). "
             "Imagenette (10 classes) at reduced resolution and width is not ImageNet: effects here need not "
             "transfer to the paper's scale, and the published ImageNet numbers are listed only for reference.", ""]
    return "\n".join(lines)


def results_table(g: GridRuns) -> str:
    base_e = {m: effects(g, m) for m in ("val10_top1_err", "val10_top5_err")}
    rows = []
    for v in variant_order(g):
        cells = g.cells[g.cells["variant"] == v]
        f = flips(g, v)
        diff = "(base)" if v == g.base else (", ".join(f"{k}={x}" for k, x in f.items()) or "–")
        d1 = "–" if v == g.base else _diff(base_e["val10_top1_err"][v])
        d5 = "–" if v == g.base else _diff(base_e["val10_top5_err"][v])
        outcomes = cells["tags.outcome"].value_counts().to_dict() if "tags.outcome" in cells else {}
        odd = ", ".join(f"{k}: {n}" for k, n in outcomes.items() if k != "learned")
        rows.append([f"`{v}`", diff, len(cells), cells["params.epochs"].iloc[0],
                     mean_std(cells["metrics.val10_top1_err"]), mean_std(cells["metrics.val10_top5_err"]),
                     mean_std(cells["metrics.val_top1_err"]), mean_std(cells["metrics.val_top5_err"]),
                     d1, d5, f"{cells['metrics.wall_time_s'].mean() / 60:.1f}" + (f" ({odd})" if odd else "")])
    table = _table(["variant", "differs from base", "n", "epochs", "top-1 10-crop", "top-5 10-crop",
                    "top-1 centre", "top-5 centre", "Δ top-1 10-crop [95% CI]", "Δ top-5 10-crop [95% CI]",
                    "wall min / run"], rows)
    ref = _table(["published (ImageNet, ILSVRC-2012 val, 10-crop)", "top-1", "top-5"],
                 [[n, pct(a), pct(b)] for n, a, b in PUBLISHED])
    return "\n".join(["## Results", "", f"Errors in %, mean ± std over seeds (n). Δ: paired difference from "
                      f"`{g.base}` (same seed), in points; positive means the variant has higher error.", "",
                      table, "", ref, ""])


def effects_section(g: GridRuns) -> tuple[str, dict]:
    fam = {m: effects(g, m) for m in ERRORS}
    blocks = ["## Paired effects", "",
              f"Each variant against `{g.base}`, seed by seed. Δ in points with a 95% interval "
              "(t-interval; BCa bootstrap from 10 seeds), paired t-test (Wilcoxon signed-rank from 6 seeds), "
              "Holm correction across the variants of the grid, per metric. Verdicts are for the deviation: "
              "'hurts' = higher error.", ""]
    for m in ERRORS:
        rows = []
        for v, e in fam[m].items():
            rows.append([f"`{v}`", e.n, _diff(e), e.ci_method, _p(e.p_t), _p(e.p_wilcoxon), _p(e.p_holm), verdict(e)])
        blocks += [f"**{m}**", "", _table(["variant", "n", "Δ (points) [95% CI]", "interval", "p (t)",
                                          "p (Wilcoxon)", "p (Holm)", "verdict"], rows), ""]
    return "\n".join(blocks), fam


def claims_section(g: GridRuns, fam: dict) -> str:
    rows = []
    for text, flip, c1, c5 in CLAIMS:
        match = [v for v in variant_order(g) if v != g.base and flips(g, v) == flip]
        if not match:
            rows.append([text, f"{100 * c1:+.1f} / " + (f"{100 * c5:+.1f}" if c5 is not None else "–"),
                         "not in this grid", "–", "not measured (no variant flips only this)"])
            continue
        e1, e5 = fam["val10_top1_err"][match[0]], fam["val10_top5_err"][match[0]]
        status = claim_status(e1, c1) if c1 > 0 else claim_status(
            Effect(e1.n, -e1.mean, e1.std, (-e1.ci[1], -e1.ci[0]), e1.ci_method, e1.p_t, e1.p_wilcoxon), -c1)
        rows.append([text, f"{100 * c1:+.1f} / " + (f"{100 * c5:+.1f}" if c5 is not None else "–"),
                     _diff(e1), _diff(e5), status])
    return "\n".join(["## The paper's claims at this scale", "",
                      "Claimed change in 10-crop error (points) when the deviation is applied, against what "
                      "this grid measured (paired Δ with 95% interval). Reproduced / contradicted refer to the "
                      "direction; the status also says whether the claimed size lies inside the interval. "
                      "This is Imagenette at reduced scale, not ImageNet.", "",
                      _table(["claim", "claimed Δ top-1 / top-5", "measured Δ top-1", "measured Δ top-5", "status"],
                             rows), ""])


def factorial_section(g: GridRuns, metric: str = "val10_top1_err") -> str:
    """Main effects and two-way interactions when the grid's variants form a full two-level factorial."""
    toggles = [t for t in REGISTRY if f"params.{t}" in g.cells and g.cells[f"params.{t}"].nunique() > 1]
    if len(toggles) < 2 or any(g.cells[f"params.{t}"].nunique() != 2 for t in toggles) or \
            g.cells["variant"].nunique() != 2 ** len(toggles):
        return ""
    base = g.cells[g.cells["variant"] == g.base].iloc[0] if g.base in set(g.cells["variant"]) else None
    coded = pd.DataFrame({t: (g.cells[f"params.{t}"] != (base[f"params.{t}"] if base is not None else
                                                         str(REGISTRY[t].paper))).astype(int) for t in toggles})
    coded[metric] = g.cells[f"metrics.{metric}"].astype(float).values
    coded = coded.dropna()
    fx = factorial_effects(coded, toggles, metric)
    rows = [[f"`{r.term}`", f"{100 * r.effect:+.2f}", f"[{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]", _p(r.p)]
            for r in fx.itertuples()]
    imp = optuna_importance(g, toggles, metric)
    return "\n".join([f"## Factorial effects ({metric})", "",
                      f"Least squares on the 2^{len(toggles)} design with {len(coded)} runs: a main effect is the mean "
                      "change (points) when the toggle moves from the paper to the deviation; an interaction is "
                      "the difference of differences. 95% intervals from the OLS fit.", "",
                      _table(["term", "effect (points)", "95% CI", "p"], rows), "",
                      "Cross-check, Optuna parameter importance (fANOVA) over the same runs: " +
                      ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} ({v})" for k, v in imp.items()),
                      ""])


def optuna_importance(g: GridRuns, toggles: list[str], metric: str) -> dict[str, float]:
    import optuna
    from optuna.distributions import CategoricalDistribution
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    dists = {t: CategoricalDistribution(sorted(g.cells[f"params.{t}"].unique())) for t in toggles}
    for _, row in g.cells.dropna(subset=[f"metrics.{metric}"]).iterrows():
        study.add_trial(optuna.trial.create_trial(params={t: row[f"params.{t}"] for t in toggles},
                                                  distributions=dists, value=float(row[f"metrics.{metric}"])))
    try:
        return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except RuntimeError as err:   # e.g. every run scored the same: nothing to attribute
        return {"not computable": str(err)}


def plots_section(g: GridRuns, fam: dict, folder: Path, rel: str) -> tuple[str, list[Path]]:
    from . import plots
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    series = {v: [g.histories[r]["val_top1_err"] for r in g.cells[g.cells["variant"] == v]["run_id"]]
              for v in variant_order(g)}
    files.append(plots.learning_curves(series, folder / "learning_curves.png",
                                       f"{g.grid} on {g.profile}: val top-1 error (mean ± std over seeds)"))
    e = fam["val10_top1_err"]
    rows = [(v, 100 * x.mean, 100 * x.ci[0], 100 * x.ci[1], verdict(x)) for v, x in e.items()]
    files.append(plots.forest(rows, folder / "effects.png", f"{g.grid} on {g.profile}: paired effect vs {g.base}",
                              "Δ 10-crop top-1 error (points), 95% CI; right = deviation hurts"))
    lr = {}
    for schedule in sorted(g.cells["params.lr_schedule"].unique()):
        sub = g.cells[g.cells["params.lr_schedule"] == schedule].sort_values(["seed", "start_time"])
        prefer = sub[sub["variant"] == g.base] if (sub["variant"] == g.base).any() else sub
        row = prefer.iloc[0]
        lr[f"lr_schedule={schedule} ({row['variant']}, seed {row['seed']})"] = g.histories[row["run_id"]]["lr"]
    files.append(plots.lr_curves(lr, folder / "lr.png", "learning rate per epoch, by schedule"))
    md = ["## Plots", ""] + [f"![{p.stem}]({rel}/{p.name})" for p in files] + [""]
    return "\n".join(md), files


def runs_section(g: GridRuns) -> str:
    rows = [[f"`{r['variant']}`", r["seed"], pct(r["metrics.val10_top1_err"]), pct(r["metrics.val_top1_err"]),
             f"`{r['run_id']}`", r.get("tags.outcome", "?"), f"`{r['tags.config_hash']}`"]
            for _, r in g.cells.sort_values(["variant", "seed"]).iterrows()]
    return "\n".join(["## Runs behind the numbers", "", "Open any of them in `mlflow ui` (search `attributes.run_id = '<id>'`).", "",
                      _table(["variant", "seed", "top-1 10-crop", "top-1 centre", "MLflow run id", "outcome",
                              "config_hash"], rows), ""])


def build(tracker, grid: str, out: Path, profile: str | None = None, command: str = "") -> tuple[str, list[Path], GridRuns]:
    g = load(tracker, grid, profile)
    folder = out.with_suffix("")
    eff_md, fam = effects_section(g)
    plots_md, files = plots_section(g, fam, folder, folder.name)
    parts = [header(g, tracker, command), results_table(g)]
    if g.cells["variant"].nunique() <= 20:
        parts += [eff_md, claims_section(g, fam)]
    parts += [factorial_section(g), plots_md, runs_section(g)]
    return "\n".join(p for p in parts if p), files, g


def summary_metrics(g: GridRuns) -> dict[str, float]:
    """Per-variant mean errors for the parent run (MLflow metric names allow [\\w./ -] only)."""
    import re
    out = {}
    for v in variant_order(g):
        cells = g.cells[g.cells["variant"] == v]
        key = re.sub(r"[^\w./ -]", "_", v)
        for m in ("val10_top1_err", "val10_top5_err"):
            vals = cells[f"metrics.{m}"].dropna()
            if len(vals):
                out[f"summary/{key}/{m}_mean"] = float(vals.mean())
    return out
