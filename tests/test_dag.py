"""The DAG file: imports cleanly, parses fast, loads nothing heavy, and has the promised shape."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DAG_FILE = REPO_ROOT / "dags" / "mmsearch_training.py"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(DAG_FILE.parent))
    assert bag.import_errors == {}
    return bag.dags["mmsearch_training"]


def test_parsing_loads_no_heavy_library_and_is_fast():
    code = (
        "import json, sys, time, importlib.util\n"
        "import airflow.sdk\n"  # Airflow itself is loaded before the clock starts, as in the DAG processor
        "start = time.perf_counter()\n"
        f"spec = importlib.util.spec_from_file_location('dagfile', {str(DAG_FILE)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "heavy = [m for m in ('tensorflow', 'tensorflow_transform', 'apache_beam', 'mlflow', 'keras', 'codecarbon',"
        " 'pandas', 'pyarrow') if m in sys.modules]\n"
        "print(json.dumps({'seconds': time.perf_counter() - start, 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["seconds"] < 2.0


def test_tasks_in_order(dag):
    order = ["data.pull_data", "data.validate", "data.merge", "model.transform", "model.train", "model.evaluate",
             "model.register"]
    assert sorted(dag.task_ids) == sorted(order)
    for upstream, downstream in zip(order, order[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}


def test_schedule_and_run_policy(dag):
    assert dag.schedule == "0 2 * * *" or str(dag.timetable.summary) == "0 2 * * *"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.doc_md
    for task in dag.tasks:
        assert task.retries >= 1 and task.retry_exponential_backoff
        assert task.execution_timeout is not None
        assert task.doc_md, task.task_id


def test_ml_tasks_run_in_the_ml_environment(dag):
    from airflow.providers.standard.operators.python import ExternalPythonOperator

    ml_tasks = {t.task_id for t in dag.tasks if isinstance(t, ExternalPythonOperator)}
    assert ml_tasks == {"model.transform", "model.train", "model.evaluate", "model.register"}
    expected = os.environ.get("MMSEARCH_ML_PYTHON", str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python"))
    assert {dag.get_task(t).python for t in ml_tasks} == {expected}
    assert Path(expected).exists()


def test_params_form_covers_every_setting(dag):
    from mmsearch.config import RunConfig

    params = dag.params
    assert params.get_param("feature_set").schema["enum"] == ["query", "query_product"]
    assert params["feature_set"] == "query_product"
    assert set(params.keys()) == {f for f in RunConfig.__dataclass_fields__}
    assert params["epochs"] == 50 and params["batch_size"] == 32 and params["patience"] == 5
    assert params["steps_per_epoch"] == 200
    assert all(params.get_param(k).description for k in params.keys())
