"""core/outcomes.py: the outcome rule on scripted learning curves (10 classes: chance 0.90)."""
from __future__ import annotations

import math

import pytest

from core.outcomes import epochs_at_chance, late_after, outcome

NORMAL = [0.89, 0.82, 0.76, 0.70, 0.60, 0.50]          # leaves chance after one epoch
LATE = [0.91, 0.91, 0.90, 0.91, 0.88, 0.80, 0.60]      # 5 epochs at chance (0.88 is not clearly below)
NEVER = [0.90, 0.91, 0.89, 0.90]


@pytest.mark.parametrize("curve,expected", [(NORMAL, 1), ([0.7, 0.6], 0), (LATE, 5), (NEVER, 4), ([], 0)])
def test_epochs_at_chance(curve, expected):
    assert epochs_at_chance(curve, 10) == expected


@pytest.mark.parametrize("scale,expected", [(1.0, 15), (0.2, 3), (0.045, 2), (0.0223, 2)])
def test_late_start_threshold_scales_with_the_profile(scale, expected):
    assert late_after(scale) == expected


def test_outcomes():
    assert outcome(NORMAL, 10, 0.2) == "learned"
    assert outcome(LATE, 10, 0.2) == "late_start"
    assert outcome(LATE, 10, 1.0) == "learned"           # 5 of 90-scale epochs is no late start
    assert outcome(NEVER, 10, 0.2) == "chance"
    assert outcome(NORMAL + [0.9], 10, 0.2) == "chance"  # learned, then fell back to chance
    assert outcome(NORMAL, 10, 0.2, diverged=True) == "diverged"
    assert outcome(NORMAL[:2] + [math.nan], 10, 0.2) == "diverged"
    assert outcome([0.99], 1000, 0.2) == "chance" and outcome([0.90], 1000, 0.2) == "learned"
