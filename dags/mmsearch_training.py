"""mmsearch_training: retrain the ESCI relevance model. Orchestration only.

Each task calls one stage of the `mmsearch` package (include/mmsearch) with the upstream
outputs it uses, named in the wiring at the bottom, and returns only what it produced:
paths, ids, counts, metrics. The TensorFlow side runs in the ML environment through
@task.external_python, so nothing heavy loads at parse time.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import (
    AssetAlias,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    TaskGroup,
    dag,
    get_current_context,
    task,
)

from mmsearch import config as C
from mmsearch.assets import CHAMPION_MODEL, RAW_DATA

REPO_ROOT = Path(__file__).resolve().parents[1]
ML_PYTHON = os.environ.get("MMSEARCH_ML_PYTHON", str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python"))
# Tasks that run in the ML environment (TensorFlow, Beam, MLflow), not in Airflow's.
ML_ENV = {"python": ML_PYTHON, "expect_airflow": False}

DOC_MD = """
### mmsearch_training

Retrains the product-search relevance model (ESCI labels E/S/C/I) from CLIP embeddings of
the query, the product's text and its image.

`configure` → `pull_data` (DVC pull, or `dvc update` of imported files) → `check_changes`
(the data, code and settings' fingerprint against the registered versions': nothing new skips
the rest) → `validate` → `merge` → `drift` (against the champion's data; a report in MLflow)
beside `transform` (TensorFlow Transform on Beam) → `train` (one mapped task per candidate,
nested MLflow runs) and `baselines`, once drift is within `drift_threshold` → `select`
(validation macro-F1) → `evaluate` (test split, beside the baselines and the champion) →
`register` (MLflow registry; the gate moves `champion`) → `announce` (the champion asset, when it
moved) → `clean_old_runs`.

Runs nightly at 02:00 UTC, or when the raw-data asset is updated.

Each run writes into its own directory under `$MMSEARCH_HOME/runs/<run_id>`. Bad input or
a bad configuration fails at once with one line naming the file, column and rows, or the
setting, and no retry.
"""

# Outlets through aliases: a task adds an event only when it produced something new.
RAW_DATA_EVENTS = AssetAlias("mmsearch_raw_data_events")
CHAMPION_EVENTS = AssetAlias("mmsearch_champion_events")

PARAMS = {field.name: Param(C.param_default(field), **C.param_schema(field)) for field in C.params_by_section()}


def _mask_credentials(context) -> None:
    """Mask credentials in every task's log, the ML tasks' relayed output included."""
    from urllib.parse import urlsplit

    from airflow.sdk.log import mask_secret

    for name in C.SECRET_ENV_VARS:
        if os.environ.get(name):
            mask_secret(os.environ[name], name)
    for name in C.SECRET_URL_ENV_VARS:
        password = urlsplit(os.environ.get(name, "")).password
        if password:
            mask_secret(password, name)


def _record_failure(context) -> None:
    """The failed task and its one-line reason, for `make run` to end with."""
    from mmsearch.io import read_json, write_json
    from mmsearch.tools.run_dag import failures_file

    lines = [line for line in str(context.get("exception") or "").splitlines() if line.strip()]
    if lines and lines[0].startswith("Process returned non-zero exit status") and len(lines) > 1:
        lines = lines[1:]  # an ML task: the reason is the child's exception, below this line
    path = failures_file(context["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    failed = read_json(path)["failed"] if path.exists() else []
    failed.append({"task_id": context["ti"].task_id, "reason": (lines[0] if lines else "unknown")[:500]})
    write_json(path, {"failed": failed})


def _fail_on_bad_input(error: Exception):
    """Bad input will not heal on retry: fail the task at once with the one-line reason."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(error))


@task(retries=0, execution_timeout=timedelta(minutes=2))
def configure() -> dict:
    """The run configuration, resolved once: every setting checked (type, range, known name);
    a bad one fails here, before any work. Returns it with the run's directory and MLflow tags."""
    from mmsearch.config import ConfigError, RunConfig, run_dir_for

    context = get_current_context()
    try:
        cfg = RunConfig.from_mapping(context["params"])
    except ConfigError as error:
        raise _fail_on_bad_input(error) from error
    dag_run = context["dag_run"]
    return {
        "config": cfg.as_dict(),
        "run_dir": str(run_dir_for(dag_run.run_id)),
        "tags": {
            "dag_id": dag_run.dag_id,
            "run_id": dag_run.run_id,
            "logical_date": dag_run.logical_date.isoformat() if dag_run.logical_date else "",
        },
    }


@task(execution_timeout=timedelta(minutes=30), outlets=[RAW_DATA_EVENTS])
def pull_data(settings: dict) -> dict:
    """`dvc pull` of the raw data, or `dvc update` of the files `make real-data` imported; fails
    naming every file DVC did not restore. With `raw_data_dir` set, that directory is used as it
    is. Returns the data's lineage; a raw-data asset event when its files changed."""
    from mmsearch import pull
    from mmsearch.config import RunConfig
    from mmsearch.io import DataError

    cfg = RunConfig.from_mapping(settings["config"])
    try:
        lineage = pull.run(cfg.repo_dir, cfg.raw_dir, cfg)
    except DataError as error:
        raise _fail_on_bad_input(error) from error
    if pull.remember(lineage):
        get_current_context()["outlet_events"][RAW_DATA_EVENTS].add(RAW_DATA, extra={"dvc_md5": lineage["dvc_md5"]})
    return lineage


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=10))
def check_changes(lineage: dict, settings: dict) -> dict:
    """This run's fingerprint (data md5s, git commit, model settings) against the registered versions'."""
    from pathlib import Path

    from mmsearch import changes
    from mmsearch.config import RunConfig
    from mmsearch.io import log_to_stderr

    log_to_stderr()
    return changes.run(lineage, Path(settings["run_dir"]) / "changes", RunConfig.from_mapping(settings["config"]))


@task.short_circuit(retries=0, execution_timeout=timedelta(minutes=5))
def anything_new(changes: dict, settings: dict) -> bool:
    """Go on only if no registered version was trained on the same inputs (or force_retrain)."""
    from mmsearch.register import write_skipped

    print(changes["reason"])
    if not changes["retrain"]:
        write_skipped(Path(settings["run_dir"]), settings["tags"], changes)
    return changes["retrain"]


@task(execution_timeout=timedelta(minutes=30))
def validate(lineage: dict, settings: dict) -> dict:
    """Schemas, dimensions, finite values, labels, unique keys, join coverage."""
    from mmsearch import validate as stage
    from mmsearch.config import RunConfig
    from mmsearch.io import DataError

    try:
        return stage.run(
            lineage["raw_dir"], Path(settings["run_dir"]) / "validate", RunConfig.from_mapping(settings["config"])
        )
    except DataError as error:
        raise _fail_on_bad_input(error) from error


@task(execution_timeout=timedelta(minutes=60))
def merge(lineage: dict, settings: dict) -> dict:
    """Join every judgement with its embeddings; split train/val/test by query."""
    from mmsearch import merge as stage
    from mmsearch.config import RunConfig
    from mmsearch.io import DataError

    try:
        return stage.run(
            lineage["raw_dir"], Path(settings["run_dir"]) / "merged", RunConfig.from_mapping(settings["config"])
        )
    except DataError as error:
        raise _fail_on_bad_input(error) from error


@task.external_python(**ML_ENV, retries=0, execution_timeout=timedelta(minutes=30))
def drift(merged: dict, settings: dict) -> dict:
    """This run's data against the champion's training data: label shares and each modality's
    embeddings. The report goes to MLflow; above `drift_threshold`, the run fails here, before training."""
    from pathlib import Path

    from mmsearch import drift as stage
    from mmsearch.config import RunConfig
    from mmsearch.io import log_to_stderr

    log_to_stderr()
    return stage.run(
        merged["merged_dir"],
        Path(settings["run_dir"]) / "drift",
        RunConfig.from_mapping(settings["config"]),
        settings["tags"],
    )


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=60))
def transform(merged: dict, settings: dict) -> dict:
    """TensorFlow Transform on Beam: z-scores and pair cosines; TFRecords and the transform graph."""
    from pathlib import Path

    from mmsearch import transform as stage
    from mmsearch.config import RunConfig
    from mmsearch.io import log_to_stderr

    log_to_stderr()
    return stage.run(
        merged["merged_dir"], Path(settings["run_dir"]) / "transform", RunConfig.from_mapping(settings["config"])
    )


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=10))
def candidates(settings: dict) -> list:
    """Open this run's parent MLflow run; list the candidates (hyperparameter overrides)."""
    from mmsearch import train as stage
    from mmsearch.config import RunConfig
    from mmsearch.io import log_to_stderr

    log_to_stderr()
    return stage.plan(RunConfig.from_mapping(settings["config"]), settings["tags"])


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=120))
def train(transformed: dict, candidate: dict, settings: dict) -> dict:
    """One candidate: Keras, a nested MLflow run, CodeCarbon; its validation metrics."""
    from pathlib import Path

    from mmsearch import train as stage
    from mmsearch.config import RunConfig
    from mmsearch.io import log_to_stderr

    log_to_stderr()
    return stage.run(
        transformed["transform_dir"],
        Path(settings["run_dir"]) / "train",
        RunConfig.from_mapping(settings["config"]),
        candidate,
        settings["tags"],
    )


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=120))
def baselines(transformed: dict, planned: list, settings: dict) -> dict:
    """The CLIP baseline (logistic regression on the cosines) and the original design's model."""
    from pathlib import Path

    from mmsearch import baselines as stage
    from mmsearch.config import RunConfig
    from mmsearch.io import log_to_stderr

    log_to_stderr()
    return stage.run(
        transformed["transform_dir"],
        Path(settings["run_dir"]) / "baselines",
        RunConfig.from_mapping(settings["config"]),
        planned[0]["parent_run_id"],
        settings["tags"],
    )


@task(execution_timeout=timedelta(minutes=5))
def select(trained: list, settings: dict) -> dict:
    """The best candidate by validation macro-F1 (reads no data, the test split least of all)."""
    from mmsearch import selection as stage
    from mmsearch.config import RunConfig

    return stage.run(list(trained), Path(settings["run_dir"]) / "select", RunConfig.from_mapping(settings["config"]))


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=30))
def evaluate(model: dict, baselines: dict, merged: dict, settings: dict) -> dict:
    """The selected model, every baseline and the champion, on the same test rows."""
    from pathlib import Path

    from mmsearch import evaluate as stage
    from mmsearch.config import RunConfig
    from mmsearch.io import log_to_stderr

    log_to_stderr()
    return stage.run(
        model,
        baselines,
        merged["merged_dir"],
        Path(settings["run_dir"]) / "evaluate",
        RunConfig.from_mapping(settings["config"]),
    )


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=30))
def register(model: dict, scores: dict, lineage: dict, settings: dict) -> dict:
    """Register in MLflow as challenger; champion only if it beats every baseline and the champion."""
    from mmsearch import register as stage
    from mmsearch.config import RunConfig
    from mmsearch.io import log_to_stderr

    log_to_stderr()
    summary = stage.run(
        model, scores, lineage, settings["run_dir"], RunConfig.from_mapping(settings["config"]), settings["tags"]
    )
    print(stage.summary_text(summary))  # relayed to this task's log
    return summary["registry"]


@task(outlets=[CHAMPION_EVENTS], execution_timeout=timedelta(minutes=5))
def announce(registry: dict) -> bool:
    """A champion-model asset event when this run's version became champion (the rank DAG runs on it)."""
    promoted = registry["decision"]["promote"]
    if promoted:
        extra = {"registered_model": registry["registered_model"], "version": registry["version"]}
        get_current_context()["outlet_events"][CHAMPION_EVENTS].add(CHAMPION_MODEL, extra=extra)
    print(f"champion {'is now' if promoted else 'stays'} {registry['champion_version'] or 'none'}")
    return promoted


@task(execution_timeout=timedelta(minutes=30))
def clean_old_runs(registry: dict, settings: dict) -> dict:
    """Delete older runs' bulky intermediates: keep the last `keep_runs` and the champion's and
    challenger's runs; summaries, metrics and reports stay."""
    from mmsearch import retention
    from mmsearch.config import RunConfig

    cfg = RunConfig.from_mapping(settings["config"])
    return retention.run(C.runs_root(), cfg.keep_runs, protect=[settings["run_dir"], *registry["lineage_run_dirs"]])


@dag(
    dag_id="mmsearch_training",
    # nightly, or as soon as an upstream ingestion (or this DAG's pull_data) updates the raw data
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"), assets=RAW_DATA),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC_MD,
    params=PARAMS,
    tags=["mmsearch", "training"],
    default_args={
        "owner": "mmsearch",
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "pre_execute": _mask_credentials,
        "on_failure_callback": _record_failure,
    },
)
def mmsearch_training():
    settings = configure()
    with TaskGroup("data", tooltip="DVC pull, anything new?, contract checks, join and group split, drift"):
        lineage = pull_data(settings)
        proceed = anything_new(check_changes(lineage, settings), settings)
        report = validate(lineage, settings)
        merged = merge(lineage, settings)
        proceed >> report >> merged
        drifted = drift(merged, settings)
    with TaskGroup("model", tooltip="TensorFlow Transform, candidates, baselines, evaluation, MLflow registry"):
        transformed = transform(merged, settings)  # beside drift: neither waits for the other
        planned = candidates(settings)
        report >> planned  # no MLflow run for data that failed validation
        # a mapped task takes its docs from its operator arguments, not from its docstring
        trained = (
            train.override(doc_md=train.function.__doc__)
            .partial(transformed=transformed, settings=settings)
            .expand(candidate=planned)
        )
        fitted = baselines(transformed, planned, settings)
        drifted >> [trained, fitted]  # too much drift fails the run before any training
        model = select(trained, settings)
        scores = evaluate(model, fitted, merged, settings)
        registry = register(model, scores, lineage, settings)
    announce(registry)
    clean_old_runs(registry, settings)


mmsearch_training()
