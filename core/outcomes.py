"""What became of a run: did it learn, start late, stay at chance or diverge? Pure Python, so
the report can apply the same rule to the histories it reads back.

- An epoch is *clearly below chance* when its centre-crop val top-1 error is at most
  chance - CHANCE_MARGIN (chance = 1 - 1/classes: 0.90 on Imagenette; 0.85 is 5 points below it,
  ten times the binomial standard error of a chance-level error on Imagenette's 3,925 val images).
- `epochs_at_chance`: the epochs before the first one clearly below chance (0 when the first
  epoch already is; the epochs run when none is).
- outcome, in this order: `diverged` (a non-finite training loss); `chance` (the last epoch is not
  clearly below chance); `late_start` (it learned, but only after at least `late_after` epochs at
  chance: 15 at the paper's 90 epochs, times the profile's epoch_scale, at least 2; 3 on the
  `cpu` profile, where runs that learn normally leave chance after 0 or 1 epoch); else `learned`.
The threshold scales with the profile only, never with the `epochs` toggle, so both runs of a
pair are judged by the same rule.
"""
from __future__ import annotations

import math

CHANCE_MARGIN = 0.05
LATE_START_AT_90 = 15
OUTCOMES = ("learned", "late_start", "chance", "diverged")


def chance_error(num_classes: int) -> float:
    return 1.0 - 1.0 / num_classes


def late_after(epoch_scale: float) -> int:
    return max(2, round(LATE_START_AT_90 * epoch_scale))


def epochs_at_chance(val_top1: list[float], num_classes: int) -> int:
    """val_top1: the centre-crop val top-1 error after each epoch, in order."""
    limit = chance_error(num_classes) - CHANCE_MARGIN
    for i, err in enumerate(val_top1):
        if err <= limit:
            return i
    return len(val_top1)


def outcome(val_top1: list[float], num_classes: int, epoch_scale: float, diverged: bool = False) -> str:
    if diverged or any(not math.isfinite(v) for v in val_top1):
        return "diverged"
    if not val_top1 or val_top1[-1] > chance_error(num_classes) - CHANCE_MARGIN:
        return "chance"
    if epochs_at_chance(val_top1, num_classes) >= late_after(epoch_scale):
        return "late_start"
    return "learned"
