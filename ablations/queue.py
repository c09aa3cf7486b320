"""A shared work queue for a grid: its cells as enqueued trials of one Optuna study in an RDB
storage (PostgreSQL for many machines, SQLite for one), keyed by config_hash.

Any number of workers, on any machines, pull cells until none is left. `study.ask()` hands a
waiting trial to exactly one worker (the storage changes its state from WAITING to RUNNING
atomically); a cell enqueued twice (two workers creating the study at the same moment) is trained
by the trial with the lowest number, the other is pruned. A worker records a heartbeat while it
trains; a worker that dies stops beating, and the next worker that looks marks its trial FAIL and
puts a copy of the cell back in the queue (Optuna's heartbeat and RetryFailedTrialCallback), so
the cell is taken over: resumed from its checkpoint when the checkpoint folder is shared. A worker
leaves when nothing is waiting and nothing is running anywhere.
"""
from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from typing import Callable

from core.config import ConfigError

HEARTBEAT_S = float(os.environ.get("ALEXNET_HEARTBEAT_S", "30"))   # seconds between a worker's heartbeats
MAX_RETRY = 3                                                       # takeovers of one cell before it is left FAILED


def storage_url(url: str) -> str:
    """SQLAlchemy's URL for an Optuna RDB storage; PostgreSQL through psycopg 3."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith(("sqlite:///", "postgresql+", "mysql")):
        return url
    if url.endswith((".log", ".journal")) or url.startswith("journal"):
        raise ConfigError(f"--storage {url!r}: Optuna's journal storage keeps no heartbeats, so a dead worker's cell "
                          f"would never be taken over; use sqlite:///path/queue.db for one machine")
    raise ConfigError(f"--storage {url!r}: give an RDB URL (postgresql://user@host:port/db for many machines, "
                      f"sqlite:///path/queue.db for one)")


def open_storage(url: str, **kwargs):
    """The queue's Optuna storage; ConfigError with one line when it cannot be opened."""
    from optuna.storages import RDBStorage
    try:
        return RDBStorage(storage_url(url), engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except ConfigError:
        raise
    except Exception as err:   # unreachable server, bad credentials, unwritable file
        raise ConfigError(f"--storage {url}: cannot open the queue ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0][:200]}); check that the database server runs "
                          f"and the URL is right") from None


def study_name(experiment: str, grid: str, profile: str, hashes: list[str]) -> str:
    """One study per set of cells: the same command finds the same study."""
    digest = hashlib.sha1("|".join(sorted(hashes)).encode()).hexdigest()[:12]
    return f"{experiment}/{grid}/{profile}/{digest}"


class CellQueue:
    def __init__(self, url: str, name: str, cells: list, on_dead_trial: Callable[[dict], None] | None = None,
                 heartbeat_s: float = HEARTBEAT_S):
        import optuna
        from optuna.storages import RetryFailedTrialCallback
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.heartbeat_s = optuna, heartbeat_s
        retry = RetryFailedTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=False)

        def dead(study, trial):   # a worker stopped beating: end its MLflow runs, put the cell back
            if on_dead_trial:
                on_dead_trial(dict(trial.user_attrs))
            retry(study, trial)

        hb = max(1, round(heartbeat_s))
        self.storage = open_storage(url, heartbeat_interval=hb, grace_period=3 * hb, failed_trial_callback=dead)
        self.study = optuna.create_study(study_name=name, storage=self.storage, load_if_exists=True)
        self.cells = {c.config.hash(): c for c in cells}
        if not self.study.get_trials(deepcopy=False):
            for cell in cells:
                self.study.enqueue_trial({}, user_attrs={"config_hash": cell.config.hash(), "cell": cell.name})
        self.trial = None
        self._beating: threading.Event | None = None
        self.attrs: dict = {}

    # -- the worker's side ----------------------------------------------------------------------
    def pending(self) -> bool:
        """Is any cell waiting or being trained?"""
        S = self.optuna.trial.TrialState
        return any(t.state in (S.WAITING, S.RUNNING) for t in self.study.get_trials(deepcopy=False))

    def next(self, attrs: dict | None = None):
        """The next cell to train (None: the grid is done); `attrs` are stored on its trial (the
        worker's MLflow parent run) for whoever takes it over."""
        S = self.optuna.trial.TrialState
        while True:
            self.optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            if not any(t.state == S.WAITING for t in trials):
                if not any(t.state == S.RUNNING for t in trials):
                    return None
                time.sleep(self.heartbeat_s)   # a running cell may come back if its worker dies
                continue
            trial = self.study.ask()
            h = trial.user_attrs.get("config_hash")
            if h not in self.cells:   # another worker took the last waiting one first
                self.study.tell(trial, state=S.PRUNED)
                continue
            same = [t for t in self.study.get_trials(deepcopy=False)
                    if t.user_attrs.get("config_hash") == h and t.number != trial.number]
            if any(t.state == S.COMPLETE for t in same) or \
                    any(t.state == S.RUNNING and t.number < trial.number for t in same):
                self.study.tell(trial, state=S.PRUNED)   # a duplicate of a cell already taken
                continue
            for k, v in (attrs or {}).items():
                trial.set_user_attr(k, v)
            self.trial = trial
            self._start_heartbeat(trial._trial_id)
            return self.cells[h]

    def finish(self, value: float | None) -> None:
        """The cell is done (value: its final error; None or NaN when it has none)."""
        S = self.optuna.trial.TrialState
        self._stop_heartbeat()
        if value is None or not math.isfinite(value):
            self.study.tell(self.trial, state=S.PRUNED)
        else:
            self.study.tell(self.trial, value)
        self.trial = None

    def release(self) -> None:
        """Interrupted: put the cell back for another worker, and end this trial."""
        if self.trial is None:
            return
        self._stop_heartbeat()
        attrs = {k: v for k, v in self.trial.user_attrs.items() if k in ("config_hash", "cell")}
        self.study.enqueue_trial({}, user_attrs=attrs)
        self.study.tell(self.trial, state=self.optuna.trial.TrialState.FAIL)
        self.trial = None

    # -- heartbeat --------------------------------------------------------------------------------
    def _start_heartbeat(self, trial_id: int) -> None:
        stop = threading.Event()
        self.storage.record_heartbeat(trial_id)

        def beat():
            while not stop.wait(self.heartbeat_s):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:   # a transient database error: the next beat tries again
                    pass

        threading.Thread(target=beat, name="queue-heartbeat", daemon=True).start()
        self._beating = stop

    def _stop_heartbeat(self) -> None:
        if self._beating:
            self._beating.set()
            self._beating = None
