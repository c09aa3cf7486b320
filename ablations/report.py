"""The Markdown report of a grid, from the runs stored in MLflow (never from the runner), read
through ablations/runs.py.

Sections: header (profile, data, seeds, commit, precision, completeness: missing cells, runs still
RUNNING; the runs left out: failed runs, duplicates); outcomes per variant (learned k/n with a Clopper-Pearson
interval, late starts); results over learned runs; the primary analysis (ablations/stats.py) with
its sensitivity check; secondary metrics, described; the paper's claims on the same intervals;
factorial effects where the grid is a two-level design; what each design's intervals cost in runs;
plots; the run behind every number, linked to its MLflow page.
"""
from __future__ import annotations

import datetime as dt
import itertools
import math
from pathlib import Path

import pandas as pd

from core.toggles import REGISTRY
from . import stats
from .runs import GridRuns, ReportError, load, toggle_diff

PRIMARY = "val10_top1_err"
SECONDARY = ("val10_top5_err", "val_top1_err", "val_top5_err")
PUBLISHED = [  # ILSVRC-2012 val, 10-crop, error (alexnet-facts.md)
    ("paper (Krizhevsky et al. 2012), 90 epochs", 0.407, 0.182),
    ("seed reproduction, 90 epochs", 0.467, 0.2269),
    ("seed reproduction, 120 epochs", 0.417, 0.193),
]
# The paper's claims: (text, the flip that removes the paper's choice, claimed change in top-1 error).
CLAIMS = [
    ("LRN (§3.3): without it, top-1 error +1.4 (top-5 +1.2)", ("lrn", False), 0.014),
    ("overlapping pooling (§3.4): with z=2, top-1 error +0.4 (top-5 +0.3)", ("overlap_pool", False), 0.004),
    ("PCA lighting (§4.1): without it, top-1 error up by over 1", ("pca", "none"), 0.01),
]


def pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def pts(x, digits=1) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.{digits}f}"


def interval(ci, digits=1) -> str:
    return "–" if math.isnan(ci[0]) else f"[{pts(ci[0], digits)}, {pts(ci[1], digits)}]"


def _p(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def learned(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[cells["outcome"] == "learned"]


# ------------------------------------------------------------------------------------ analysis
def primary_effects(g: GridRuns, metric: str = PRIMARY) -> dict[str, stats.Effect]:
    """Each non-base variant against the base on the seeds where both learned; Holm family."""
    base = g.cells[g.cells["variant"] == g.base].set_index("seed")
    out = {}
    for v in g.variants:
        if v == g.base:
            continue
        var = g.cells[g.cells["variant"] == v].set_index("seed")
        both = var.index.intersection(base.index)
        ok = [s for s in both if var.loc[s, "outcome"] == "learned" and base.loc[s, "outcome"] == "learned"]
        d = (var.loc[ok, metric] - base.loc[ok, metric]).astype(float).dropna().to_numpy()
        out[v] = stats.paired(d, dropped=len(both) - len(d))
    return stats.family(out)


def is_two_level(g: GridRuns) -> list[str]:
    """The toggles of a two-level (full or fractional) design, or [] when the grid is not one."""
    varying = [t for t in REGISTRY if g.cells[f"t.{t}"].nunique() > 1]
    if len(varying) < 2 or any(g.cells[f"t.{t}"].nunique() != 2 for t in varying):
        return []
    pairs = [g.cells[[f"t.{a}", f"t.{b}"]].drop_duplicates() for a, b in itertools.combinations(varying, 2)]
    return varying if all(len(p) == 4 for p in pairs) else []   # every pair crossed: main effects and 2-way terms


def coded(g: GridRuns, toggles: list[str]) -> pd.DataFrame:
    """0 = the paper's value, 1 = the deviation, per toggle; with seed, outcome and metrics."""
    data = pd.DataFrame({t: (g.cells[f"t.{t}"] != REGISTRY[t].paper).astype(int) for t in toggles})
    for col in ("seed", "outcome", "run_id", PRIMARY, *SECONDARY):
        data[col] = g.cells[col].values
    return data


# ----------------------------------------------------------------------------------- rendering
def header(g: GridRuns, tracker, command: str) -> str:
    c = g.cells.iloc[0]["params"]
    seeds = g.seeds
    commits = ", ".join(f"`{k}` ({p}, {n} runs)" for (k, p), n in sorted(g.groups.items()))
    expected = max((int(r.tags.get("cells", 0)) for r in g.parents), default=0)
    started = dt.datetime.fromtimestamp(g.cells["start_ms"].min() / 1000, dt.timezone.utc)
    lines = [f"# Ablation report: grid `{g.grid}`, profile `{g.profile}`", "",
             f"- **Profile** `{g.profile}`: dataset {c.get('dataset')} ({c.get('train_images')} train / "
             f"{c.get('val_images')} val images), {c.get('image_size')} px crops of {c.get('prep_size')} px images, "
             f"width {c.get('width')}, batch {c.get('batch_size')}, lr {c.get('lr')}, {machines(g)}, "
             f"precision {c.get('precision', '?')}",
             f"- **Seeds**: {len(seeds)} ({', '.join(map(str, seeds))}); every number below says its n",
             f"- **Code and precision**: {commits}" + (" — **pooled** across them (`--pool`)" if g.pooled else "")
             + same_code_note(g),
             f"- **Cells**: {len(g.cells)} finished cells used, first started {started:%Y-%m-%d %H:%M} UTC"
             + (f"; the grid's launch planned {expected} cells" if expected else "") + copied_note(g),
             f"- **MLflow**: `{tracker.uri}`, experiment `{tracker.experiment}` "
             f"([runs table]({tracker.run_url()}), [every cell's validation curve]"
             f"({tracker.curves_url(list(g.cells['run_id']))})); run ids of every number at the end",
             f"- **Report generated** {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"]
    incomplete, left_out = [], []   # cells the grid lacks; runs of finished cells it does not use
    if g.missing:
        shown = ", ".join(f"`{m}`" for m in g.missing[:12]) + (f" and {len(g.missing) - 12} more" if len(g.missing) > 12 else "")
        incomplete.append(f"- **Missing cells** ({len(g.missing)}): {shown}")
    if expected and expected > len(g.cells):
        incomplete.append(f"- **Not yet run**: {expected - len(g.cells)} of the {expected} cells the launch planned")
    if g.running:
        incomplete.append(f"- **Still RUNNING** ({len(g.running)}): " + ", ".join(f"`{r.name}` ({r.run_id})" for r in g.running))
    if g.orphaned:
        left_out.append(f"- **RUNNING, though the cell has a FINISHED run** ({len(g.orphaned)}, not used; left by a "
                        "process that died, which the next `run_ablation.py` of this grid ends KILLED, or a `--rerun` "
                        "in progress): " + ", ".join(f"`{r.name}` ({r.run_id})" for r in g.orphaned))
    if g.stopped:
        left_out.append(f"- **FAILED or KILLED runs** ({len(g.stopped)}, not used): "
                        + ", ".join(f"`{r.name}` {r.status}" for r in g.stopped[:10]))
    for h, used, others in g.duplicates:
        left_out.append(f"- **Duplicate FINISHED runs** of config_hash `{h}`: used `{used}` (the latest), "
                        f"left out {', '.join(f'`{o}`' for o in others)}")
    if g.superseded:
        left_out.append(f"- {g.superseded} older run(s) of a variant and seed under another config left out")
    if incomplete:
        lines += ["", "**This grid is incomplete:**", ""] + incomplete + left_out
    else:
        lines += ["- **Complete**: every cell of every seed has a finished run"]
        lines += (["", "**Runs left out** (their cells have finished runs):", ""] + left_out) if left_out else []
    cmds = list(dict.fromkeys(r.tags["command"] for r in g.parents if r.tags.get("command")))
    lines += ["", "Commands that made it:", "", "```"] + cmds + [command, "```", "",
              "> Errors in %, on the val split (Imagenette has no separate test split). Imagenette (10 classes) at "
              "reduced resolution and width is not ImageNet: effects here need not transfer to the paper's scale.", ""]
    return "\n".join(lines)


def machines(g: GridRuns) -> str:
    """The device and CPU kind each cell trained on, counted, and whether each seed's cells (the
    pairs of the analysis) share one machine kind: a pair split across kinds adds the machines'
    difference to its difference."""
    kind = g.cells["params"].map(lambda p: f"{p.get('device', '?')} ({p.get('cpu', '?')})")
    counts = kind.value_counts()
    if len(counts) == 1:
        return f"device {counts.index[0]}"
    split = int((kind.groupby(g.cells["seed"]).nunique() > 1).sum())
    return ("devices " + ", ".join(f"{k}: {n} runs" for k, n in counts.items())
            + (f"; seeds with cells on more than one kind: {split}" if split else "; each seed's cells on one kind"))


def same_code_note(g: GridRuns) -> str:
    """Commits paired because one reproduced the other's numbers (run_ablation.py --reuse-commit)."""
    return "".join(f"; `{c}` and `{x}` paired: {', '.join(f'`{n}`' for n in names)} retrained at `{x}` gave `{c}`'s "
                   f"numbers at every epoch (tag `matches_run`), and `{c}`'s other runs of "
                   f"{'that variant' if len(names) == 1 else 'those variants'} were copied"
                   for c, (x, names) in sorted(g.same_code.items()))


def copied_note(g: GridRuns) -> str:
    """The cells copied from another grid's run (run_ablation.py reuses a FINISHED run of the same
    config and commit instead of training it again)."""
    copied = g.cells.dropna(subset=["reused_from"])
    if copied.empty:
        return ""
    grids = ", ".join(f"`{x}`" for x in sorted(copied["reused_from_grid"].dropna().unique()))
    return (f"; {len(copied)} of them copied from grid {grids} (the same config and commit, or a commit shown to "
            "train it identically; not trained again; tag `reused_from`): results shared with that grid are not "
            "independent of it")


def outcomes_section(g: GridRuns) -> str:
    rows = []
    for v in g.variants:
        c = g.cells[g.cells["variant"] == v]
        k, n = int((c["outcome"] == "learned").sum()), len(c)
        lo, hi = stats.clopper_pearson(k, n)
        late = c[c["outcome"] == "late_start"]
        rows.append([f"`{v}`", f"{k}/{n}", f"[{pct(lo)}, {pct(hi)}]",
                     ", ".join(f"seed {s} ({e} epochs)" for s, e in zip(late["seed"], late["epochs_at_chance"])) or "–",
                     int((c["outcome"] == "chance").sum()), int((c["outcome"] == "diverged").sum()),
                     f"{c['epochs_at_chance'].median():g}"])
    return "\n".join(["## Outcomes", "",
                      "Per run (core/outcomes.py): `learned`; `late_start` (learned only after the profile's "
                      "late-start threshold of epochs at chance); `chance` (ended at chance); `diverged`. Only "
                      "learned runs enter the results and the analysis; the rest are counted here.", "",
                      table(["variant", "learned k/n", "learned, 95% CI (%)", "late starts", "chance", "diverged",
                             "median epochs at chance"], rows), ""])


def results_section(g: GridRuns) -> str:
    rows = []
    for v in g.variants:
        c = g.cells[g.cells["variant"] == v]
        ok = learned(c)
        ms = lambda m: (f"{pct(ok[m].mean())} ± {pct(ok[m].std(ddof=1)) if len(ok) > 1 else '–'} (n={len(ok)})"
                        if len(ok) else "n/a")
        rows.append([f"`{v}`", ", ".join(f"{k}={x}" for k, x in toggle_diff(g, v).items()) or ("(base)" if v == g.base else "–"),
                     c["epochs_run"].iloc[0], ms(PRIMARY), ms("val10_top5_err"), ms("val_top1_err"),
                     f"{pct(c[PRIMARY].median())} (n={len(c)})", f"{c['wall_time_s'].mean() / 60:.1f}"])
    ref = table(["published (ImageNet, ILSVRC-2012 val, 10-crop)", "top-1", "top-5"],
                [[n, pct(a), pct(b)] for n, a, b in PUBLISHED])
    return "\n".join(["## Results (learned runs)", "",
                      "Error in %, mean ± SD over the learned runs (n); the median over all runs beside it.", "",
                      table(["variant", "differs from base", "epochs", "top-1 10-crop", "top-5 10-crop",
                             "top-1 centre", "top-1 10-crop, median of all runs", "min / run"], rows), "", ref, ""])


def primary_section(g: GridRuns, fam: dict[str, stats.Effect]) -> str:
    m = sum(not math.isnan(e.p) for e in fam.values())
    rows = []
    for v, e in fam.items():
        rows.append([f"`{v}`", e.n, e.dropped, pts(e.mean, 2), f"{100 * e.sd:.2f}" if e.n > 1 else "–",
                     f"{100 * e.level:.2f}%", interval(e.ci, 2), _p(e.p), _p(e.p_holm), stats.verdict(e),
                     f"{pts(e.hl, 2)} {interval(e.hl_ci, 2)}"])
    return "\n".join([f"## Primary analysis: {PRIMARY}, each variant against `{g.base}`", "",
                      f"Declared before the data (README: Statistics). Δ = variant − base on the same seed, in "
                      f"points, over the pairs where both runs learned (pairs with a late start, chance or "
                      f"divergence are dropped and counted). Paired t-test, Holm across the {m} testable variants; "
                      f"each interval at the level of the Holm step that decided it, so it excludes 0 exactly "
                      f"when the verdict is resolved. Verdicts (for the deviation: 'hurts' = higher error) from "
                      f"{stats.MIN_PAIRS} pairs. Sensitivity: Hodges–Lehmann estimate with its signed-rank "
                      f"interval at the same level.", "",
                      table(["variant", "pairs used", "dropped", "Δ", "SD of Δ", "level", "interval", "p (t)",
                             "p (Holm)", "verdict", "Hodges–Lehmann [interval]"], rows), ""])


def secondary_section(g: GridRuns) -> str:
    rows = []
    for metric in SECONDARY:
        for v, e in primary_effects(g, metric).items():
            rows.append([metric, f"`{v}`", e.n, pts(e.mean, 2), f"{100 * e.sd:.2f}" if e.n > 1 else "–"])
    return "\n".join(["## Secondary metrics (described, not tested)", "",
                      table(["metric", "variant", "learned pairs", "mean Δ", "SD of Δ"], rows), ""])


def claim_rows(g: GridRuns, fam: dict | None, fx: pd.DataFrame | None) -> list[list[str]]:
    """Per paper claim: [claim, claimed Δ, measured Δ [interval], detectable, status] for this grid."""
    rows = []
    for text, (toggle, value), claimed in CLAIMS:
        match = [v for v in g.variants if v != g.base and toggle_diff(g, v) == {toggle: value}] if fam else []
        if match:
            e = fam[match[0]]
            rows.append([text, pts(claimed), f"{pts(e.mean, 2)} {interval(e.ci, 2)} (n={e.n} pairs)",
                         pct(stats.detectable(e.sd, e.n, 1 - e.level)), stats.claim_status(e, claimed)])
        elif fx is not None and toggle in set(fx["term"]) and REGISTRY[toggle].deviation == value:
            r = fx.set_index("term").loc[toggle]
            inside = r.ci_low <= claimed <= r.ci_high
            state = ("not resolved" if r.ci_low <= 0 <= r.ci_high else
                     "reproduced (direction)" if (r.effect > 0) == (claimed > 0) else "contradicted")
            rows.append([text, pts(claimed), f"{pts(r.effect, 2)} {interval((r.ci_low, r.ci_high), 2)} (main effect)",
                         pct(stats.detectable_from_interval((r.ci_low, r.ci_high))),
                         f"{state}; claimed size {'inside' if inside else 'outside'} the interval"])
        else:
            rows.append([text, pts(claimed), "–", "–", f"not measured (no variant of this grid sets {toggle}={value})"])
    return rows


CLAIMS_NOTE = ("Claimed change in 10-crop top-1 error (points) when the paper's choice is removed, against "
               "the same interval as the verdicts (one-at-a-time grids: paired learned runs, family-wise) or the "
               "factorial main effect (95%, HC3). This is Imagenette at reduced scale, not ImageNet. Detectable: "
               "the smallest effect these runs find with 80% power at the interval's level (paired t-test on the "
               "pairs' SD; for a main effect, (z + 0.84) standard errors).")


def claims_section(g: GridRuns, fam: dict | None, fx: pd.DataFrame | None) -> str:
    return "\n".join(["## The paper's claims at this scale", "", CLAIMS_NOTE, "",
                      table(["claim", "claimed Δ", "measured Δ [interval]", "detectable", "status"],
                            claim_rows(g, fam, fx)), ""])


def analyse(g: GridRuns) -> tuple[dict | None, str, pd.DataFrame | None, list[str]]:
    """The grid's primary analysis: paired effects (one-at-a-time) and/or the factorial fit."""
    toggles = is_two_level(g)
    one_at_a_time = g.base in set(g.cells["variant"]) and not toggles
    fam = primary_effects(g) if one_at_a_time else None
    fx_md, fx = factorial_section(g, toggles) if toggles else ("", None)
    return fam, fx_md, fx, toggles


def claims_across(tracker, grids: list[str], profile: str | None = None, commit: str | None = None,
                  pool: bool = False, command: str = "") -> str:
    """The paper's claims as every named grid of the store measures them: one table, a row per
    claim and grid that tests it, each naming its grid, commit, learned runs and failures."""
    rows, notes = [], []
    for grid in grids:
        try:
            g = load(tracker, grid, profile, commit, pool)
        except ReportError as err:
            notes.append(f"- `{grid}`: {err}")
            continue
        fam, _, fx, _ = analyse(g)
        commits = ", ".join(f"`{c[:7]}` {p}" for c, p in
                            g.cells[["commit", "precision"]].drop_duplicates().itertuples(index=False))
        ok = learned(g.cells)
        copied = g.cells["reused_from"].notna().sum()
        source = (f"`{grid}` ({commits}, {g.cells['seed'].nunique()} seeds, {len(ok)}/{len(g.cells)} learned"
                  + (f", {copied} cells copied from another grid" if copied else "")
                  + ("; INCOMPLETE" if g.missing or g.running else "") + ")")
        for row in claim_rows(g, fam, fx):
            if row[2] != "–":
                rows.append([row[0], row[1], source, *row[2:]])
        if not any(r[2] == source for r in rows):
            notes.append(f"- `{grid}`: tests none of the claims")
    rows.sort(key=lambda r: [c[0] for c in CLAIMS].index(r[0]))
    untested = [text for text, _, _ in CLAIMS if not any(r[0] == text for r in rows)]
    notes += [f"- not measured by these grids: {text}" for text in untested]
    made = (f"From `{tracker.uri}`, experiment `{tracker.experiment}`"
            + (f", profile `{profile}`" if profile else "")
            + f", {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC" + (f": `{command}`" if command else "") + ".")
    return "\n".join(["## The paper's claims, per grid", "", made, "", CLAIMS_NOTE, "",
                      table(["claim", "claimed Δ", "grid", "measured Δ [interval]", "detectable", "status"], rows)]
                     + ([""] + notes if notes else []) + [""])


def factorial_section(g: GridRuns, toggles: list[str]) -> tuple[str, pd.DataFrame | None]:
    data = coded(g, toggles)
    ok = data[data["outcome"] == "learned"].dropna(subset=[PRIMARY])
    counts = []
    for t in toggles:
        cells = []
        for level in (0, 1):
            sub = data[data[t] == level]
            k, n = int((sub["outcome"] == "learned").sum()), len(sub)
            lo, hi = stats.clopper_pearson(k, n)
            cells.append(f"{k}/{n} [{pct(lo)}, {pct(hi)}]")
        counts.append([f"`{t}`", *cells])
    if len(ok) <= len(toggles) * (len(toggles) + 1) // 2 + ok["seed"].nunique():
        return ("\n".join(["## Factorial effects", "", f"Too few learned runs ({len(ok)}) to fit {len(toggles)} main "
                           f"effects and their two-way interactions.", "",
                           table(["toggle", "learned at the paper's value", "learned at the deviation"], counts), ""]), None)
    fx = stats.factorial_fit(ok, toggles, PRIMARY)
    runs = len(g.cells)
    rows = [[f"`{r.term}`", pts(r.effect, 2), interval((r.ci_low, r.ci_high), 2),
             f"±{100 * (r.ci_high - r.ci_low) / 2:.2f}" if not math.isnan(r.ci_low) else "–", _p(r.p)]
            for r in fx.itertuples()]
    design = f"2^{len(toggles)}" if g.cells["variant"].nunique() == 2 ** len(toggles) else f"2^({len(toggles)}-1)"
    strong = [r.term for r in fx.itertuples() if ":" in r.term and not math.isnan(r.ci_low)
              and (r.ci_low > 0 or r.ci_high < 0)]
    simple = []
    if strong:
        se = stats.simple_effects(ok, toggles, PRIMARY, strong)
        simple = ["Simple effects, for each two-way interaction whose 95% interval excludes 0 (unadjusted for the "
                  f"{len(toggles) * (len(toggles) - 1) // 2} interactions, so descriptive): the effect of each of its "
                  "two toggles with the other held at the paper's value and at the deviation (main effect ∓ half "
                  "the interaction, its interval from the same fit).", "",
                  table(["interaction", "effect of", "with", "at", "effect", "95% CI", "p"],
                        [[f"`{r.interaction}`", f"`{r.toggle}`", f"`{r.given}`", r.level, pts(r.effect, 2),
                          interval((r.ci_low, r.ci_high), 2), _p(r.p)] for r in se.itertuples()]), ""]
    return ("\n".join([f"## Factorial effects ({PRIMARY})", "",
                       f"Least squares on the {design} design over {len(ok)} learned runs of {runs} "
                       f"({runs - len(ok)} excluded: not learned), seed as a block, HC3 standard errors, 95% "
                       f"intervals. A main effect is the mean change (points) when the toggle moves from the paper "
                       f"to the deviation, averaged over the other toggles; an interaction is the difference of "
                       f"differences.", "",
                       table(["term", "effect", "95% CI", "half-width", "p"], rows), "", *simple,
                       "Learning per level (failure to learn, modelled apart from the error: the runs excluded above):",
                       "", table(["toggle", "learned at the paper's value", "learned at the deviation"], counts), ""]),
            fx)


def cost_section(g: GridRuns, fam: dict | None, fx: pd.DataFrame | None, toggles: list[str]) -> str:
    """What each interval cost: half-width and the runs of the grid behind it."""
    runs, rows = len(g.cells), []
    if fam:
        for v, e in fam.items():
            if not math.isnan(e.ci[0]):
                rows.append([f"`{v}` (paired, {100 * e.level:.1f}%)", f"±{100 * (e.ci[1] - e.ci[0]) / 2:.2f}", runs,
                             f"±{100 * (e.ci[1] - e.ci[0]) / 2 * math.sqrt(runs / 100):.2f}"])
    if fx is not None:
        for r in fx[fx["term"].isin(toggles)].itertuples():
            if not math.isnan(r.ci_low):
                half = (r.ci_high - r.ci_low) / 2
                rows.append([f"`{r.term}` (main effect, 95%)", f"±{100 * half:.2f}", runs,
                             f"±{100 * half * math.sqrt(runs / 100):.2f}"])
    if not rows:
        return ""
    return "\n".join(["## What the certainty cost", "",
                      "Interval half-width (points) and the runs of this grid that bought it; the last column scales "
                      "it to 100 runs (half-widths shrink with the square root of the runs), so designs compare "
                      "per run. A factorial's main effect uses every run; a one-at-a-time effect uses two runs a seed.", "",
                      table(["effect", "half-width", "runs in the grid", "half-width at 100 runs"], rows), ""])


def plots_section(g: GridRuns, fam: dict | None, folder: Path, rel: str) -> tuple[str, list[Path]]:
    from . import plots
    folder.mkdir(parents=True, exist_ok=True)
    series = {v: [(g.histories[r.run_id]["val_top1_err"], r.outcome != "learned", r.seed)
                  for r in g.cells[g.cells["variant"] == v].itertuples()] for v in g.variants}
    files = [plots.learning_curves(series, folder / "learning_curves.png",
                                   f"{g.grid} on {g.profile}: val top-1 error per seed (thin), median (thick)")]
    if fam:
        rows = [(v, 100 * e.mean, 100 * e.ci[0], 100 * e.ci[1], stats.verdict(e)) for v, e in fam.items()]
        files.append(plots.forest(rows, folder / "effects.png", f"{g.grid} on {g.profile}: paired effect vs {g.base}",
                                  "Δ 10-crop top-1 error (points), family-wise interval; right = deviation hurts"))
    lr = {}
    for schedule in sorted(g.cells["t.lr_schedule"].dropna().unique()):
        sub = g.cells[g.cells["t.lr_schedule"] == schedule]
        row = (sub[sub["variant"] == g.base] if (sub["variant"] == g.base).any() else sub).iloc[0]
        lr[f"lr_schedule={schedule} ({row['variant']}, seed {row['seed']})"] = g.histories[row["run_id"]]["lr"]
    files.append(plots.lr_curves(lr, folder / "lr.png", "learning rate per epoch, by schedule"))
    return "\n".join(["## Plots", ""] + [f"![{p.stem}]({rel}/{p.name})" for p in files] + [""]), files


def runs_section(g: GridRuns, tracker) -> str:
    rows = [[f"`{r.variant}`", r.seed, pct(getattr(r, PRIMARY)), r.outcome, r.epochs_at_chance,
             f"[{r.run_id[:12]}]({tracker.run_url(r.run_id)})", f"`{r.config_hash}`", f"`{r.commit}`"]
            for r in g.cells.sort_values(["variant", "seed"]).itertuples()]
    return "\n".join(["## Runs behind the numbers", "",
                      f"Links open the run in the MLflow UI (`mlflow ui --backend-store-uri {tracker.uri}` for a "
                      f"file store).", "",
                      table(["variant", "seed", "top-1 10-crop", "outcome", "epochs at chance", "MLflow run",
                             "config_hash", "commit"], rows), ""])


def build(tracker, grid: str, out: Path, profile: str | None = None, command: str = "",
          commit: str | None = None, pool: bool = False) -> tuple[str, list[Path], GridRuns]:
    g = load(tracker, grid, profile, commit, pool)
    fam, fx_md, fx, toggles = analyse(g)
    folder = out.with_suffix("")
    plots_md, files = plots_section(g, fam, folder, folder.name)
    parts = [header(g, tracker, command), outcomes_section(g), results_section(g)]
    if fam:
        parts += [primary_section(g, fam), secondary_section(g)]
    parts += [fx_md, claims_section(g, fam, fx), cost_section(g, fam, fx, toggles), plots_md, runs_section(g, tracker)]
    return "\n".join(p for p in parts if p), files, g


def summary_metrics(g: GridRuns) -> dict[str, float]:
    """Per-variant mean errors of learned runs for the parent run (MLflow names allow [\\w./ -])."""
    import re
    out = {}
    for v in g.variants:
        ok = learned(g.cells[g.cells["variant"] == v])
        key = re.sub(r"[^\w./ -]", "_", v)
        for m in ("val10_top1_err", "val10_top5_err"):
            if len(ok[m].dropna()):
                out[f"summary/{key}/{m}_mean_learned"] = float(ok[m].mean())
    return out

