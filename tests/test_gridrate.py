"""tools.gridrate: a grid trained for a fixed time into a fresh store, its epochs counted."""
from __future__ import annotations

import contextlib
import io

from tools import gridrate


def test_gridrate_counts_the_epochs_a_grid_finished(tmp_path, tiny_imagefolder):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = gridrate.main(["--seconds", "30", "--", "--grid", "deviations", "--profile", "smoke",
                              "--data-root", str(tiny_imagefolder), "--cache-dir", str(tmp_path / "cache")])
    line = out.getvalue()
    assert code == 0, line
    epochs = int(line.split(": ")[1].split(" epochs in")[0])
    per_cell = float(line.split("cells/hour at ")[1].split(" epochs per cell")[0])
    assert epochs >= 2 and "epochs/hour" in line, line
    assert 2.0 <= per_cell <= 3.0, line          # smoke cells run 2 (paper) or 3 (seed's 120) epochs
