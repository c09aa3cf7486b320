"""Runs of another commit reused once this commit is shown to train them identically.

A grid run with `--reuse-commit C` may copy cells that commit C FINISHED (in any grid of the
experiment) instead of training them again, but only for a variant whose arithmetic this commit
has reproduced: the first cell of the variant that C trained on this kind of machine is trained
first, again, here, and its every logged epoch (train loss, centre and 10-crop errors) compared, bit for
bit, with C's run. "This kind of machine" is the device, the CPU's instruction set and the
number of intra-op threads (the run param `threads`; runs logged before it was recorded are
taken as candidates): the threads decide the order of the float sums. Equal: the run is tagged `matches_commit` / `matches_run`, and the variant's
other cells are copied from C's runs (tags `git_commit` C, `copied_at_commit`, `verified_by`).
Not equal (other code, or another thread count): tagged `differs_from_run` with the metrics that
differ, and the next cell of the variant is tried the same way; until one matches, every cell is
trained, as without the flag. The report pairs C's runs with this commit's once a grid holds such
a match (ablations/runs.py), and says so in its header.
"""
from __future__ import annotations

from core import runtime

COMPARED = ("train_loss", "val_top1_err", "val_top5_err", "val10_top1_err", "val10_top5_err")


def verified_by(records: list, variant: str, commit: str, other: str) -> str | None:
    """The run of `variant` at `commit` (among a grid's `records`) that reproduced `other`'s run of
    the same cell exactly, or None."""
    return next((r.run_id for r in records if r.status == "FINISHED" and r.tags.get("role") == "cell"
                 and r.tags.get("variant") == variant and r.tags.get("git_commit") == commit
                 and r.tags.get("matches_commit") == other), None)


def probes_first(todo: list, tracker, records: list, commit: str, other: str, device: str, threads: int) -> list:
    """`todo` with, for each variant not yet verified, the first cell whose `other` run was made on
    this kind of machine moved to the front: a machine of another kind than the one that trained
    the first seeds checks (and then copies) as early as one that trained them."""
    probes, seen = [], set()
    for cell in todo:
        variant = cell.variant.name
        if variant in seen or verified_by(records, variant, commit, other):
            continue
        older = tracker.find_finished(cell.config.hash(), other)
        if older is not None and comparable(older, device, threads):
            probes.append(cell)
            seen.add(variant)
    return probes + [c for c in todo if c not in probes]


def comparable(older, device: str, threads: int) -> bool:
    """Whether `older` (a RunRecord) was trained on this kind of machine with `threads` intra-op
    threads: only then can retraining its cell here reproduce its numbers."""
    return (older.params.get("device") == device and older.params.get("cpu") == runtime.cpu_kind()
            and older.params.get("threads", str(threads)) == str(threads))


def differing(tracker, run_id: str, older_id: str) -> list[str]:
    """The metrics (of COMPARED) whose history, every step, is not the same in the two runs."""
    out = []
    for key in COMPARED:
        mine = sorted(tracker.history(run_id, key))
        if not mine or mine != sorted(tracker.history(older_id, key)):
            out.append(key)
    return out


def verdict_tags(tracker, run_id: str, older) -> dict[str, str]:
    """Tags for a run of this commit retrained to compare with `older` (the other commit's run)."""
    differs = differing(tracker, run_id, older.run_id)
    other = older.tags.get("git_commit", "?")
    if differs:
        return {"differs_from_run": older.run_id, "differs_in": ",".join(differs)}
    return {"matches_commit": other, "matches_run": older.run_id}


def equivalents(cells: list) -> dict[str, tuple[str, list[str]]]:
    """commit -> (the commit its runs were shown to equal, the names of the FINISHED runs tagged matches_commit)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for r in cells:
        if r.status == "FINISHED" and r.tags.get("matches_commit"):
            out.setdefault(r.tags["matches_commit"], (r.tags.get("git_commit", "?"), []))[1].append(r.name)
    return {c: (x, sorted(names)) for c, (x, names) in out.items()}
