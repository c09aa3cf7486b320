"""Rows that several runners write first at once: MLflow's SQL store looks for a dataset (or an
experiment tag) and then inserts it, so two runners starting cells together on a new store race,
and the loser got an IntegrityError that failed its cell. core.tracking.on_shared_row retries the
write once the winner has committed."""
from __future__ import annotations

import threading

import mlflow
import pytest
from mlflow.entities import Dataset, DatasetInput
from mlflow.exceptions import MlflowException

from core.tracking import on_shared_row


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_runs_logging_one_new_dataset_at_once_both_succeed(tmp_path, backend, request):
    uri = (f"sqlite:///{tmp_path}/mlflow.db" if backend == "sqlite"
           else request.getfixturevalue("postgres")().replace("postgresql://", "postgresql+psycopg://"))
    client = mlflow.MlflowClient(uri)
    errors = []
    for round_ in range(10):   # unguarded, most rounds lose the race (24 of 30 when measured)
        experiment = client.create_experiment(f"race-{round_}")
        runs = [client.create_run(experiment).info.run_id for _ in range(2)]
        start = threading.Barrier(2)

        def log(run_id):
            dataset = DatasetInput(Dataset(name="imagenette-64px", digest="0123456789abcdef", source_type="local",
                                           source="/data"))
            start.wait()
            try:
                on_shared_row(lambda: client.log_inputs(run_id, datasets=[dataset]))
            except MlflowException as err:
                errors.append(str(err)[:200])

        threads = [threading.Thread(target=log, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for run_id in runs:   # each run has the one dataset
            assert [d.dataset.digest for d in client.get_run(run_id).inputs.dataset_inputs] == ["0123456789abcdef"]
    assert not errors, errors


def test_other_errors_are_raised_at_once():
    calls = []

    def write():
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no such run")

    with pytest.raises(MlflowException, match="no such run"):
        on_shared_row(write)
    assert len(calls) == 1
