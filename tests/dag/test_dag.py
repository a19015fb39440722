"""The DAG file: imports cleanly, parses fast, loads nothing heavy, and has the promised shape."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch.run_context import EXTERNAL_PYTHON_SCRIPT
from tests.helpers import ML_PYTHON, REPO_ROOT

DAG_FILE = REPO_ROOT / "dags" / "mmsearch_training.py"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(DAG_FILE.parent))
    assert bag.import_errors == {}
    return bag.dags["mmsearch_training"]


@pytest.mark.parametrize("dag_file", sorted((REPO_ROOT / "dags").glob("mmsearch_*.py")), ids=lambda p: p.stem)
def test_parsing_loads_no_heavy_library_and_is_fast(dag_file):
    code = (
        "import json, sys, time, importlib.util\n"
        "import airflow.sdk\n"  # Airflow itself is loaded before the clock starts, as in the DAG processor
        "start = time.perf_counter()\n"
        f"spec = importlib.util.spec_from_file_location('dagfile', {str(dag_file)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "heavy = [m for m in ('tensorflow', 'tensorflow_transform', 'apache_beam', 'mlflow', 'keras', 'codecarbon',"
        " 'pandas', 'pyarrow') if m in sys.modules]\n"
        "print(json.dumps({'seconds': time.perf_counter() - start, 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["seconds"] < 2.0


# Each task's upstream tasks: exactly the outputs it takes, as the wiring names them.
WIRING = {
    "configure": set(),
    "data.pull_data": {"configure"},
    "data.publish_catalogue": {"configure", "data.pull_data"},
    "data.check_changes": {"configure", "data.pull_data"},
    "data.anything_new": {"configure", "data.check_changes"},
    "data.validate": {"configure", "data.pull_data", "data.anything_new"},
    "data.merge": {"configure", "data.pull_data", "data.validate"},
    "data.drift": {"configure", "data.merge", "model.candidates"},
    "model.transform": {"configure", "data.merge"},
    "model.candidates": {"configure", "data.validate"},
    "model.train": {"configure", "model.transform", "model.candidates", "data.drift"},
    "model.baselines": {"configure", "model.transform", "model.candidates", "data.drift"},
    "model.select": {"configure", "model.train"},
    "model.evaluate": {"configure", "model.select", "model.baselines", "data.merge"},
    "model.register": {"configure", "model.select", "model.evaluate", "data.pull_data"},
    "model.approve_promotion": {"configure", "model.register"},
    "model.promote": {"configure", "model.register", "model.approve_promotion"},
    "announce": {"model.promote"},
    "clean_old_runs": {"configure", "model.promote"},
}


def test_each_task_takes_the_outputs_it_uses(dag):
    assert set(dag.task_ids) == set(WIRING)
    for task_id, upstream in WIRING.items():
        assert dag.get_task(task_id).upstream_task_ids == upstream, task_id


def test_training_is_mapped_over_the_candidates(dag):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    train = dag.get_task("model.train")
    assert isinstance(train, MappedOperator)
    assert "candidate" in train.op_kwargs_expand_input.value


def test_schedule_nightly_or_on_new_raw_data(dag):
    from airflow.sdk import Asset, AssetOrTimeSchedule

    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 2 * * *"
    assert isinstance(dag.timetable.asset_condition, Asset)
    assert dag.timetable.asset_condition.name == "mmsearch_raw_data"


def test_assets_are_produced_through_aliases(dag):
    """An event only when something new was produced: the tasks add it themselves."""
    assert [o.name for o in dag.get_task("data.pull_data").outlets] == ["mmsearch_raw_data_events"]
    assert [o.name for o in dag.get_task("announce").outlets] == ["mmsearch_champion_events"]


def test_the_rank_dag_runs_on_the_champion_asset():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(DAG_FILE.parent))
    rank = bag.dags["mmsearch_rank"]
    assert [a.name for a in rank.timetable.asset_condition.objects] == ["mmsearch_champion_model"]
    assert set(rank.task_ids) == {"configure", "rank"}
    assert bag.dags["mmsearch_maintenance"].task_ids == ["clean_metadata", "clean_task_logs"]


def test_run_policy(dag):
    """Every task retries what can heal (a broker restarting while the scheduler hands a task over
    fails it before it runs); the retry policy fails bad input, settings and credentials at once."""
    from mmsearch.dag_support import FailOnceWhenRetryCannotHeal

    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.doc_md
    for task in dag.tasks:
        assert task.doc_md, task.task_id
        assert task.retries >= 1 and task.retry_exponential_backoff, task.task_id
        assert isinstance(task.retry_policy, FailOnceWhenRetryCannotHeal), task.task_id
        if task.task_id == "model.approve_promotion":  # waits for a person: approval_timeout_hours bounds it
            assert task.defaults == ["Reject"]  # no answer in time rejects
            continue
        assert task.execution_timeout is not None, task.task_id


def test_ml_tasks_run_in_the_ml_environment(dag):
    from airflow.providers.standard.operators.python import ExternalPythonOperator

    ml_tasks = {t.task_id for t in dag.tasks if isinstance(t, ExternalPythonOperator)}
    assert ml_tasks == {
        "data.check_changes",
        "data.drift",
        "model.transform",
        "model.candidates",
        "model.baselines",
        "model.evaluate",
        "model.register",
        "model.promote",
    }
    assert dag.get_task("model.train").partial_kwargs["python"] == ML_PYTHON
    assert {dag.get_task(t).python for t in ml_tasks} == {ML_PYTHON}
    assert Path(ML_PYTHON).exists()


def test_params_form_covers_every_setting_in_sections(dag):
    from mmsearch.config import RunConfig
    from mmsearch.config_schema import SECTIONS

    params = dag.params
    assert set(params.keys()) == set(RunConfig.__dataclass_fields__)
    assert params.get_param("feature_set").schema["enum"] == ["query", "query_product"]
    assert params["feature_set"] == "query_product"
    assert params["epochs"] == 50 and params["batch_size"] == 32 and params["patience"] == 5
    assert params["steps_per_epoch"] == 200
    assert all(params.get_param(k).description for k in params)
    sections = [params.get_param(k).schema["section"] for k in params]
    assert set(sections) == set(SECTIONS)
    assert sections == sorted(sections, key=SECTIONS.index)  # grouped, in the form's order


def test_the_form_requires_nothing_with_its_defaults(dag):
    """Airflow's form marks a field required when its type does not allow null, and counts an
    empty value as missing: no field may be both."""
    for name in dag.params:
        param = dag.params.get_param(name)
        types = param.schema["type"] if isinstance(param.schema["type"], list) else [param.schema["type"]]
        assert "null" in types or param.value not in (None, ""), name
    dag.params.validate()  # the defaults pass the params' own JSON Schema


def test_numbers_carry_their_ranges(dag):
    from airflow.sdk.exceptions import ParamValidationError

    schema = {name: dag.params.get_param(name).schema for name in dag.params}
    assert schema["epochs"]["minimum"] == 1
    assert schema["dropout"]["minimum"] == 0 and schema["dropout"]["exclusiveMaximum"] == 1
    assert schema["val_fraction"]["exclusiveMinimum"] == 0 and schema["val_fraction"]["exclusiveMaximum"] == 1
    # the form's number box shows no range: each description says it
    assert dag.params.get_param("epochs").description.endswith(" Allowed: ≥ 1.")
    assert dag.params.get_param("dropout").description.endswith(" Allowed: ≥ 0 and < 1.")
    with pytest.raises(ParamValidationError):
        dag.params.get_param("epochs").resolve(-3)


@pytest.mark.parametrize(
    "conf, line",
    [
        ('{"epohcs": 5}', "unknown setting 'epohcs' (did you mean 'epochs'?)"),
        ('{"epochs": -3}', "epochs must be ≥ 1, not -3"),
        ('{"feature_set": "pair"}', "feature_set must be one of ['query', 'query_product'], not 'pair'"),
        ('{"epochs": 5', "the conf is not JSON: Expecting ',' delimiter: line 1 column 13 (char 12)"),
    ],
)
def test_make_run_refuses_a_bad_conf_before_any_work_in_one_line(conf, line, tmp_path):
    from tests.helpers import isolated_env

    result = subprocess.run(
        [str(Path(sys.executable).parent / "mmsearch"), "run-dag", "--conf", conf],
        env=isolated_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"mmsearch run-dag: error: {line}"
    assert not (tmp_path / "home").exists()  # no Airflow run, nothing written


def test_every_task_masks_credentials_records_its_failure_and_retries_only_what_can_heal():
    from airflow.dag_processing.dagbag import DagBag

    from mmsearch.dag_support import FailOnceWhenRetryCannotHeal, mask_credentials, record_failure

    bag = DagBag(str(DAG_FILE.parent))
    for dag_id in ("mmsearch_training", "mmsearch_rank"):
        for task in bag.dags[dag_id].tasks:
            given = getattr(task, "partial_kwargs", None) or {  # a mapped task keeps them unapplied
                "retry_policy": task.retry_policy,
                "pre_execute": task._pre_execute_hook,
                "on_failure_callback": task.on_failure_callback,
            }
            assert isinstance(given["retry_policy"], FailOnceWhenRetryCannotHeal), (dag_id, task.task_id)
            assert given["pre_execute"] == mask_credentials, (dag_id, task.task_id)
            callbacks = given["on_failure_callback"]
            assert record_failure in (callbacks if isinstance(callbacks, list) else [callbacks]), task.task_id


RELAYED = "Process returned non-zero exit status 1.\n"  # how Airflow words an ML task's failure


@pytest.mark.parametrize(
    ("exception", "action"),
    [
        ("DataError", "fail"),
        ("ConfigError", "fail"),
        (RELAYED + "CredentialsError: MLflow at http://127.0.0.1:5000 refused the credentials", "fail"),
        (RELAYED + "DataError: merged/train: column 'label': ...", "fail"),
        (RELAYED + "MLflow tracking server http://127.0.0.1:5000 unreachable after 3 attempts", "default"),
        ("worker lost", "default"),
    ],
)
def test_a_retry_is_refused_only_for_what_fails_the_same_way_again(exception, action):
    from airflow.sdk.exceptions import AirflowException

    from mmsearch.config import ConfigError
    from mmsearch.dag_support import FailOnceWhenRetryCannotHeal
    from mmsearch.io import DataError

    error = {"DataError": DataError("x.parquet", "file is missing"), "ConfigError": ConfigError("unknown setting")}
    raised = error.get(exception) or AirflowException(exception)
    assert FailOnceWhenRetryCannotHeal().evaluate(raised, try_number=1, max_tries=3).action.value == action


def test_an_ml_task_relays_bad_input_by_name_and_its_reason_is_recorded_without_it():
    """In the ML task's process, stage_task turns a DataError into CannotHeal('DataError: ...'), the
    text Airflow relays; the failure record keeps the reason alone."""
    code = (
        "from mmsearch.run_context import stage_task\n"
        "from mmsearch.io import DataError\n"
        "from mmsearch import config\n"
        "settings = {'config': config.RunConfig().as_dict(), 'run_dir': '/tmp/r', 'tags': {}}\n"
        "try:\n"
        "    with stage_task(settings):\n"
        "        raise DataError('x.parquet', 'file is missing')\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, '|', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "CannotHeal | DataError: x.parquet: file is missing"
    from mmsearch.run_context import cannot_heal, failure_reason

    relayed = RuntimeError(RELAYED + "DataError: x.parquet: file is missing")
    assert cannot_heal(relayed) and failure_reason(relayed) == "x.parquet: file is missing"


@pytest.mark.parametrize("ending, status", [("", 0), ("raise OSError('the result could not be written')", 1)])
def test_an_ml_task_process_skips_the_interpreter_teardown_only_when_it_ends_well(ending, status, tmp_path):
    """As Airflow's external-python script runs a task: the stage, then the result written. A handler
    registered before the stage stands for the teardown: skipped on success, run on an error."""
    code = (
        "import atexit, sys\n"
        "from mmsearch import config\n"
        "from mmsearch.run_context import stage_task\n"
        "atexit.register(lambda: print('teardown', file=sys.stderr))\n"
        f"settings = {{'config': config.RunConfig().as_dict(), 'run_dir': {str(tmp_path)!r}, 'tags': {{}}}}\n"
        "with stage_task(settings):\n"
        "    print('stage done', file=sys.stderr)\n"
        "print('result written')\n" + ending
    )
    env = {**os.environ, EXTERNAL_PYTHON_SCRIPT: "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == status, result.stderr
    assert result.stdout == "result written\n" and "stage done" in result.stderr
    assert ("teardown" in result.stderr) == (status != 0)
