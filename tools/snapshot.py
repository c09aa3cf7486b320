"""A consistent copy of a SQLite MLflow store that a grid may be writing to, to commit or share:

    python -m tools.snapshot /data/store/mlflow.db results/mlflow.db

SQLite's online backup copies the database as of one moment (a run half-logged by a live runner is
copied as it stands then: RUNNING, with the epochs it had), reading the source read-only. The copy
is written beside the destination, checked with `PRAGMA integrity_check`, and renamed into place,
so the destination is either the old file or a whole new one. Only the database is copied, not the
artifacts (weights, reports) that lie beside it; reports and plans read only the database.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from core.errors import ConfigError


def snapshot(source: Path, dest: Path) -> dict[str, int]:
    """Copy `source` to `dest` atomically; returns the runs per status in the copy."""
    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise ConfigError(f"{source}: no such SQLite store; pass the path of the store's .db file")
    if dest.resolve() == source.resolve():
        raise ConfigError(f"{dest} is the store itself; pass another destination")
    if not dest.parent.is_dir():
        raise ConfigError(f"{dest.parent}: no such folder; create it or pass another destination")
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        src = sqlite3.connect(f"file:{source.resolve()}?mode=ro", uri=True, timeout=60)
        try:
            out = sqlite3.connect(tmp)
            try:
                src.backup(out)
                check = out.execute("PRAGMA integrity_check").fetchone()[0]
                if check != "ok":
                    raise ConfigError(f"the copy of {source} fails SQLite's integrity check ({check}); "
                                      f"check the source with `sqlite3 {source} 'PRAGMA integrity_check'`")
                try:
                    counts = dict(out.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
                except sqlite3.DatabaseError:
                    raise ConfigError(f"{source} is a SQLite database but not an MLflow store (no runs "
                                      f"table); pass the store's .db file") from None
            finally:
                out.close()
        finally:
            src.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"{source}: cannot be read as a SQLite database ({err}); pass the store's .db file") from None
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="the SQLite store (.db) to copy")
    ap.add_argument("dest", type=Path, help="the file to write (replaced whole, or left as it was)")
    args = ap.parse_args(argv)
    try:
        counts = snapshot(args.source, args.dest)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.dest}: {sum(counts.values())} runs ("
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "), integrity ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
