"""The one module that imports MLflow. The engine and runner talk to `Tracker`/`RunLog`; tests can
use `MemoryTracker`. Names logged here are the contract the UI and report.py rely on."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
import warnings
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import yaml

from .errors import ConfigError

DEFAULT_EXPERIMENT = "alexnet-deviations"
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)   # no start/stop chatter per run


class TrackingError(ConfigError):
    """A store, experiment, run or artifact that is not there; the message says what is."""


@dataclass(frozen=True)
class RunRecord:
    """One stored run as the read side returns it: MLflow's names stay in this module."""
    run_id: str
    name: str
    status: str                    # RUNNING, FINISHED, FAILED, KILLED
    start_ms: int | None
    end_ms: int | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]      # latest value of each metric
    parent_id: str | None = None


class RunLog(Protocol):
    run_id: str
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_dict(self, data: dict, path: str) -> None: ...
    def log_state_dict(self, state: dict, path: str) -> None: ...


class Tracker(Protocol):
    def parent(self, name: str, tags: dict[str, Any], params: dict[str, Any]) -> contextlib.AbstractContextManager[RunLog]: ...
    def child(self, name: str, params: dict[str, Any], tags: dict[str, Any],
              dataset: dict[str, str] | None = None, resume: str | None = None
              ) -> contextlib.AbstractContextManager[RunLog]: ...
    def finished_hashes(self, grid: str) -> set[str]: ...
    def find_finished(self, config_hash: str, commit: str) -> RunRecord | None: ...
    def has_finished(self, commit: str) -> bool: ...
    def copy_artifacts(self, source_id: str, run_id: str) -> bool: ...
    def end(self, run_id: str, status: str = "KILLED", tags: dict[str, Any] | None = None) -> None: ...
    # the read side (report.py): every run of a grid, a metric's history, links
    uri: str
    experiment: str
    def records(self, grid: str) -> list[RunRecord]: ...
    def history(self, run_id: str, key: str) -> list[tuple[int, float]]: ...
    def run_url(self, run_id: str | None = None) -> str: ...
    def curves_url(self, run_ids: list[str], metric: str = "val_top1_err") -> str: ...


def resolve_uri(uri: str | None) -> str | None:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else MLflow's default (None)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def download_artifact(run_id: str, path: str, folder: str, uri: str | None = None) -> Path:
    """A run's artifact into `folder`; TrackingError when the store, run or artifact is not there
    (a missing SQLite store is never created)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.exceptions import MlflowException
    uri = resolve_uri(uri) or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise TrackingError(f"no MLflow store at {uri[len('sqlite:///'):]}; pass --tracking-uri of the run's store")
    client = mlflow.MlflowClient(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"no run {run_id!r} in {uri}; pass a run id from the report or the MLflow UI") from None
    try:
        return Path(client.download_artifacts(run_id, path, folder))
    except (MlflowException, OSError):
        raise TrackingError(f"run {run_id} has no {path} (a run that did not finish, or whose artifacts are "
                            f"not beside this store); pass -w with a weights file instead") from None


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of a run, or of the experiment's runs table (not the GenAI overview):
    on the tracking server itself, or on `mlflow ui --backend-store-uri URI` at its default port."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def curves_url(uri: str, experiment_id: str, run_ids: list[str], metric: str = "val_top1_err") -> str:
    """The MLflow UI's metric page: one metric's per-epoch curves of the given runs side by side."""
    base = ui_url(uri, experiment_id).split("/#/")[0]
    query = urllib.parse.urlencode({"runs": json.dumps(list(run_ids)), "metric": json.dumps(metric),
                                    "experiments": json.dumps([str(experiment_id)]),
                                    "plot_metric_keys": json.dumps([metric]), "x_axis": "step"},
                                   quote_via=urllib.parse.quote)
    return f"{base}/#/metric?{query}"


# ----------------------------------------------------------------------------------------------- MLflow
def check_store(uri: str | None) -> None:
    """Fail within seconds, with one line, on a store that cannot be used (a server that does not
    answer, a SQLite store or folder that is not writable); creates nothing."""
    uri = resolve_uri(uri) or "sqlite:///mlflow.db"
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5).read()
        except OSError as err:
            raise TrackingError(f"no MLflow server answers at {uri} ({getattr(err, 'reason', err)}); start it "
                                f"(mlflow server --host ... --port ...) or pass another --tracking-uri") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("/"))
        if (path.is_file() and not os.access(path, os.R_OK | os.W_OK)) or not os.access(folder, os.W_OK | os.X_OK):
            raise TrackingError(f"cannot write the MLflow store {path}; pass a --tracking-uri in a folder you can write")


def prepare_store(uri: str) -> None:
    """check_store, then create a new SQLite store whole or not at all (its tables are made in a
    temporary file linked into place, so an interrupt never leaves a half-made store)."""
    import mlflow
    check_store(uri)
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if path.is_file():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mlflow.MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)   # creates the tables
        os.link(tmp, path)       # never replaces a store another process created meanwhile
    except FileExistsError:
        pass
    except OSError as err:
        raise TrackingError(f"cannot create an MLflow store at {path} ({err.strerror}); "
                            f"pass a --tracking-uri in a folder you can write") from None
    finally:
        tmp.unlink(missing_ok=True)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _hold_signals():
    """Defer SIGINT/SIGTERM (delivered when released); returns the previous mask."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _release_signals(previous) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _signals_held():
    previous = _hold_signals()
    try:
        yield
    finally:
        _release_signals(previous)


def on_shared_row(write, attempts: int = 5):
    """write() for a row that other processes may write first (an experiment's tag, a dataset every
    cell logs): MLflow's store looks for the row and then inserts it, so of two processes that look
    at once, one gets an IntegrityError. After the other has committed, the same write finds the row
    and succeeds; any other error is raised at once."""
    from mlflow.exceptions import MlflowException
    for attempt in range(attempts):
        try:
            return write()
        except MlflowException as err:
            text = f"{err} {err.__cause__!r}"   # SQLite, PostgreSQL, or either behind an MLflow server
            lost_race = any(m in text for m in ("IntegrityError", "UNIQUE constraint", "duplicate key", "/gkpj"))
            if not lost_race or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


class _MlflowRun:
    def __init__(self, client, run_id: str, logged: dict[str, int] | None = None):
        """logged: the last step of each metric already in the run (a resumed run): those steps
        are not logged again, so a resumed run's history has no duplicated step."""
        self.client, self.run_id, self.logged = client, run_id, logged or {}

    def log_metrics(self, metrics, step=None):
        from mlflow.entities import Metric
        ts, step = int(time.time() * 1000), step or 0
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if step > self.logged.get(k, -1)]
        if batch:
            with _signals_held():   # a stop never lands inside a store transaction
                self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags):
        from mlflow.entities import RunTag
        with _signals_held():
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, data, path):
        with _signals_held():
            self.client.log_text(self.run_id, yaml.safe_dump(data, sort_keys=False), path)

    def log_state_dict(self, state, path):
        import torch
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            torch.save(state, local)
            with _signals_held():
                self.client.log_artifact(self.run_id, str(local), str(Path(path).parent) if Path(path).parent != Path(".") else None)


def _record(r) -> RunRecord:
    """An MLflow Run as the read side's RunRecord."""
    return RunRecord(r.info.run_id, r.info.run_name or "", r.info.status, r.info.start_time, r.info.end_time,
                     dict(r.data.params), dict(r.data.tags), dict(r.data.metrics), r.data.tags.get("mlflow.parentRunId"))


class MlflowTracker:
    def __init__(self, experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None,
                 system_metrics: bool = True, create: bool = True):
        """create=False (reading): a missing store or experiment raises TrackingError, and
        nothing is written."""
        import mlflow
        self.uri = resolve_uri(tracking_uri)
        if not create:
            self._check_exists(experiment)
        if self.uri:
            mlflow.set_tracking_uri(self.uri)
        self.uri = mlflow.get_tracking_uri()
        prepare_store(self.uri)
        self.experiment = experiment
        found = mlflow.MlflowClient().get_experiment_by_name(experiment)
        if found is None and self.uri.startswith("sqlite:///"):   # artifacts beside the store, not in ./mlruns
            artifacts = Path(self.uri[len("sqlite:///"):]).resolve().parent / "mlartifacts"
            try:
                with _signals_held():
                    mlflow.MlflowClient().create_experiment(experiment, artifact_location=artifacts.as_uri())
            except mlflow.exceptions.MlflowException:
                if mlflow.MlflowClient().get_experiment_by_name(experiment) is None:   # not a concurrent create
                    raise
        self.experiment_id = mlflow.set_experiment(experiment).experiment_id
        # open the experiment on its runs table, not the GenAI traces overview
        on_shared_row(lambda: mlflow.MlflowClient().set_experiment_tag(self.experiment_id, "mlflow.experimentKind",
                                                                       "custom_model_development"))
        self.client = mlflow.MlflowClient()
        self.system_metrics = system_metrics
        self._parent_id: str | None = None

    def _check_exists(self, experiment: str) -> None:
        import mlflow
        uri = self.uri or mlflow.get_tracking_uri()
        if uri.startswith("sqlite:///"):
            path = Path(uri[len("sqlite:///"):])
            if not path.is_file():
                raise TrackingError(f"no MLflow store at {path} ({uri}); pass --tracking-uri of the store "
                                    f"the grid was run into")
        client = mlflow.MlflowClient(uri)
        if client.get_experiment_by_name(experiment) is None:
            names = [e.name for e in client.search_experiments()]
            raise TrackingError(f"no experiment {experiment!r} in {uri}; experiments there: "
                                f"{', '.join(names) or '(none)'}; pass --experiment NAME")

    def run_url(self, run_id: str | None = None) -> str:
        return ui_url(self.uri, self.experiment_id, run_id)

    def curves_url(self, run_ids: list[str], metric: str = "val_top1_err") -> str:
        return curves_url(self.uri, self.experiment_id, run_ids, metric)

    def records(self, grid: str) -> list[RunRecord]:
        """Every run of `grid` in the experiment (cells and parents, any status)."""
        from mlflow.entities import ViewType
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.grid = '{grid}'",
                                           run_view_type=ViewType.ACTIVE_ONLY, max_results=5000, page_token=token)
            out += [_record(r) for r in page]
            token = page.token
            if not token:
                return out

    @contextlib.contextmanager
    def _run(self, name, params, tags, nested: bool, resume: str | None = None) -> Iterator[_MlflowRun]:
        """A run that always ends with a status: FINISHED, KILLED (Ctrl-C / SIGTERM) or FAILED.
        Stop signals are held back while a run is being created or ended, so an interruption
        never lands between the two and leaves a run RUNNING. resume: the id of an existing run
        to continue (RUNNING again, under the current parent; params and steps already logged
        are kept, not logged twice)."""
        import mlflow
        tags = {k: str(v) for k, v in tags.items()}
        logged = {}
        if resume:
            logged = {k: max((m.step for m in self.client.get_metric_history(resume, k)), default=-1)
                      for k in self.client.get_run(resume).data.metrics}
            if nested and self._parent_id:
                tags["mlflow.parentRunId"] = self._parent_id
        with _signals_held():
            if resume:
                active = mlflow.start_run(run_id=resume, nested=nested, tags=tags,
                                          log_system_metrics=self.system_metrics)
            else:
                active = mlflow.start_run(run_name=name, nested=nested, tags=tags,
                                          parent_run_id=self._parent_id if nested else None,
                                          experiment_id=self.experiment_id, log_system_metrics=self.system_metrics)
            held = _hold_signals()          # keep holding until inside the try below
        try:
            _release_signals(held)          # a stop that arrived meanwhile is raised here, inside the try
            if params and not resume:
                with _signals_held():
                    mlflow.log_params({k: str(v) for k, v in params.items()})
            yield _MlflowRun(self.client, active.info.run_id, logged)
        except KeyboardInterrupt:
            with _signals_held():
                mlflow.end_run("KILLED")
            raise
        except BaseException:
            with _signals_held():
                mlflow.end_run("FAILED")
            raise
        with _signals_held():
            mlflow.end_run("FINISHED")

    @contextlib.contextmanager
    def parent(self, name, tags, params):
        with self._run(name, params, tags, nested=False) as run:
            self._parent_id = run.run_id
            try:
                yield run
            finally:
                self._parent_id = None

    @contextlib.contextmanager
    def child(self, name, params, tags, dataset=None, resume: str | None = None):
        with self._run(name, params, tags, nested=True, resume=resume) as run:
            if dataset and not resume:
                self._log_dataset(dataset)
            yield run

    def end(self, run_id: str, status: str = "KILLED", tags: dict[str, Any] | None = None) -> None:
        """End a run another process left RUNNING (it died without ending it)."""
        if tags:
            _MlflowRun(self.client, run_id).set_tags(tags)
        self.client.set_terminated(run_id, status)

    def _log_dataset(self, dataset: dict[str, str]) -> None:
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        where = dataset["source"]
        if where.startswith("hf:") and not os.path.isdir(where[3:]):   # a Hugging Face dataset name
            from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
            source = HuggingFaceDatasetSource(path=where[3:])
        else:                                                           # a folder (ImageFolder, save_to_disk)
            with warnings.catch_warnings():   # a local path matches MLflow's local source twice; same class
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(where.removeprefix("hf:"))
        ds = MetaDataset(source, name=dataset["name"], digest=dataset["digest"])
        on_shared_row(lambda: mlflow.log_input(ds, context=dataset.get("context", "training")))

    def finished_hashes(self, grid: str) -> set[str]:
        """config_hash of every FINISHED cell of `grid` in the experiment (what resume skips)."""
        return {r.tags["config_hash"] for r in self.records(grid)
                if r.status == "FINISHED" and "config_hash" in r.tags}

    def find_finished(self, config_hash: str, commit: str) -> RunRecord | None:
        """The newest FINISHED cell run of `config_hash` made by `commit` in the experiment, from any
        grid (None: there is none)."""
        found = self.client.search_runs([self.experiment_id],
                                        f"tags.config_hash = '{config_hash}' and tags.git_commit = '{commit}' "
                                        "and tags.role = 'cell' and attributes.status = 'FINISHED'",
                                        max_results=1, order_by=["attributes.start_time DESC"])
        return _record(found[0]) if found else None

    def has_finished(self, commit: str) -> bool:
        """Whether the experiment holds a FINISHED cell run made by `commit`."""
        return bool(self.client.search_runs([self.experiment_id], f"tags.git_commit = '{commit}' and tags.role = 'cell' "
                                            "and attributes.status = 'FINISHED'", max_results=1))

    def copy_artifacts(self, source_id: str, run_id: str) -> bool:
        """Every artifact of run `source_id` into run `run_id`; False when the source has none that
        can be read (a store copied without its artifact folder)."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # not inside the grid's bar
        import mlflow
        from mlflow.exceptions import MlflowException
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(run_id=source_id, dst_path=tmp, tracking_uri=self.uri))
            except (MlflowException, OSError):
                return False
            if not any(local.iterdir()):
                return False
            with _signals_held():
                self.client.log_artifacts(run_id, str(local))
        return True

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    def log_parent_files(self, run_id: str, files: list[str], folder: str | None = None) -> None:
        for f in files:
            self.client.log_artifact(run_id, f, folder)

    def log_parent_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        _MlflowRun(self.client, run_id).log_metrics(metrics)


class NullRun:
    """The RunLog of a torchrun rank other than 0: rank 0 logs for all of them."""

    def log_metrics(self, metrics, step=None):
        pass

    def set_tags(self, tags):
        pass

    def log_dict(self, data, path):
        pass

    def log_state_dict(self, state, path):
        pass


# ----------------------------------------------------------------------------------------------- memory
@dataclass
class MemoryRun:
    run_id: str
    name: str
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)      # key -> [(step, value)]
    artifacts: dict = field(default_factory=dict)
    status: str = "RUNNING"
    parent_id: str | None = None

    def log_metrics(self, metrics, step=None):
        for k, v in metrics.items():   # like a resumed MLflow run: a step already logged is not logged again
            if not self.metrics.get(k) or (step or 0) > self.metrics[k][-1][0]:
                self.metrics.setdefault(k, []).append((step or 0, float(v)))

    def set_tags(self, tags):
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_dict(self, data, path):
        self.artifacts[path] = data

    def log_state_dict(self, state, path):
        self.artifacts[path] = state


class MemoryTracker:
    """In-memory stand-in with the same interface, for unit tests of the engine and the report."""

    def __init__(self, experiment: str = DEFAULT_EXPERIMENT):
        self.runs: list[MemoryRun] = []
        self._parent: str | None = None
        self.uri, self.experiment = "memory", experiment

    def records(self, grid):
        return self.records_where(lambda r: r.tags.get("grid") == grid)

    def records_where(self, keep) -> list[RunRecord]:
        return [RunRecord(r.run_id, r.name, r.status, i * 1000, i * 1000 + 1, dict(r.params), dict(r.tags),
                          {k: v[-1][1] for k, v in r.metrics.items()}, r.parent_id)
                for i, r in enumerate(self.runs) if keep(r)]

    def history(self, run_id, key):
        return next(r.metrics.get(key, []) for r in self.runs if r.run_id == run_id)

    def run_url(self, run_id=None):
        return f"memory://{run_id or ''}"

    def curves_url(self, run_ids, metric="val_top1_err"):
        return f"memory://{metric}/{','.join(run_ids)}"

    @contextlib.contextmanager
    def _run(self, name, params, tags, resume=None):
        if resume:
            run = next(r for r in self.runs if r.run_id == resume)
            run.status, run.parent_id = "RUNNING", self._parent or run.parent_id
            run.tags.update({k: str(v) for k, v in tags.items()})
        else:
            run = MemoryRun(f"run{len(self.runs)}", name, {k: str(v) for k, v in params.items()},
                            {k: str(v) for k, v in tags.items()}, parent_id=self._parent)
            self.runs.append(run)
        try:
            yield run
        except KeyboardInterrupt:
            run.status = "KILLED"
            raise
        except BaseException:
            run.status = "FAILED"
            raise
        run.status = "FINISHED"

    @contextlib.contextmanager
    def parent(self, name, tags, params):
        with self._run(name, params, tags) as run:
            self._parent = run.run_id
            try:
                yield run
            finally:
                self._parent = None

    def child(self, name, params, tags, dataset=None, resume=None):
        return self._run(name, params, tags, resume)

    def end(self, run_id, status="KILLED", tags=None):
        run = next(r for r in self.runs if r.run_id == run_id)
        run.status = status
        run.tags.update({k: str(v) for k, v in (tags or {}).items()})

    def finished_hashes(self, grid):
        return {r.tags.get("config_hash") for r in self.runs
                if r.status == "FINISHED" and r.tags.get("grid") == grid} - {None}

    def find_finished(self, config_hash, commit):
        return next((rec for rec in reversed(self.records_where(lambda r: True))
                     if rec.status == "FINISHED" and rec.tags.get("role") == "cell"
                     and rec.tags.get("config_hash") == config_hash and rec.tags.get("git_commit") == commit), None)

    def has_finished(self, commit):
        return any(r.status == "FINISHED" and r.tags.get("role") == "cell" and r.tags.get("git_commit") == commit
                   for r in self.runs)

    def copy_artifacts(self, source_id, run_id):
        source = next(r for r in self.runs if r.run_id == source_id)
        next(r for r in self.runs if r.run_id == run_id).artifacts.update(source.artifacts)
        return bool(source.artifacts)
