"""mmsearch_training: retrain the ESCI relevance model. Orchestration only.

Each task calls one stage of the `mmsearch` package (include/mmsearch) with the upstream
outputs it uses, named in the wiring at the bottom, and returns only what it produced:
paths, ids, counts, metrics. The TensorFlow side runs in the ML environment through
@task.external_python, so nothing heavy loads at parse time.
"""

from __future__ import annotations

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

from mmsearch import alerts, config, config_schema, paths
from mmsearch.approval import PromotionApproval
from mmsearch.assets import CHAMPION_MODEL, RAW_DATA
from mmsearch.dag_support import default_args

# Tasks that run in the ML environment (TensorFlow, Beam, MLflow), not in Airflow's.
ML_ENV = {"python": paths.ml_python(), "expect_airflow": False}

DOC_MD = """
### mmsearch_training

Retrains the product-search relevance model (ESCI labels E/S/C/I) from CLIP embeddings of
the query, the product's text and its image.

The Graph view shows its tasks and each task's docs say what it does; the README's diagram
and docs/design.md say why.

Runs nightly at 02:00 UTC, or when the raw-data asset is updated.

Each run writes into its own directory under `$MMSEARCH_HOME/runs/<run_id>`. Bad input or
a bad configuration fails at once with one line naming the file, column and rows, or the
setting, and no retry.
"""

# Outlets through aliases: a task adds an event only when it produced something new.
RAW_DATA_EVENTS = AssetAlias("mmsearch_raw_data_events")
CHAMPION_EVENTS = AssetAlias("mmsearch_champion_events")

PARAMS = {
    field.name: Param(config_schema.param_default(field), **config_schema.param_schema(field))
    for field in config.params_by_section()
}


@task(execution_timeout=timedelta(minutes=2))
def configure() -> dict:
    """The run configuration, resolved once: every setting checked (type, range, known name);
    a bad one fails here, before any work. Returns it with the run's directory and MLflow tags."""
    from mmsearch.config import RunConfig
    from mmsearch.paths import run_dir_for

    context = get_current_context()
    cfg = RunConfig.from_mapping(context["params"])
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
    from mmsearch.run_context import stage_task
    from mmsearch.stages import pull

    with stage_task(settings, ml_env=False) as run:
        lineage = pull.run(out_dir=run.cfg.raw_dir, cfg=run.cfg, tags=run.tags)
    if pull.remember(lineage):
        get_current_context()["outlet_events"][RAW_DATA_EVENTS].add(RAW_DATA, extra={"dvc_md5": lineage["dvc_md5"]})
    return lineage


@task(execution_timeout=timedelta(minutes=30))
def publish_catalogue(lineage: dict, settings: dict) -> dict:
    """The pulled product file, checked against the contract, published as the catalogue the
    re-ranking service serves, whether or not this run trains; a bad file fails here, unserved."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import publish as stage

    with stage_task(settings, ml_env=False) as run:
        return stage.run(lineage, out_dir=run.out("publish"), cfg=run.cfg, tags=run.tags)


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=10))
def check_changes(lineage: dict, settings: dict) -> dict:
    """This run's fingerprint (data md5s, git commit, model settings) against the registered versions'."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import check_changes as stage

    with stage_task(settings) as run:
        return stage.run(lineage, out_dir=run.out("changes"), cfg=run.cfg, tags=run.tags)


@task.short_circuit(execution_timeout=timedelta(minutes=5))
def anything_new(changes: dict, settings: dict) -> bool:
    """Go on only if no registered version was trained on the same inputs (or force_retrain)."""
    from mmsearch.summary import write_skipped

    print(changes["reason"])
    if not changes["retrain"]:
        write_skipped(Path(settings["run_dir"]), settings["tags"], changes)
    return changes["retrain"]


@task(execution_timeout=timedelta(minutes=30))
def validate(lineage: dict, settings: dict) -> dict:
    """Schemas, dimensions, finite values, labels, unique keys, join coverage."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import validate as stage

    with stage_task(settings, ml_env=False) as run:
        return stage.run(lineage["raw_dir"], out_dir=run.out("validate"), cfg=run.cfg, tags=run.tags)


@task(execution_timeout=timedelta(minutes=60))
def merge(lineage: dict, settings: dict) -> dict:
    """Join every judgement with its embeddings; split train/val/test by query."""
    from mmsearch.lineage import data_digest
    from mmsearch.run_context import stage_task
    from mmsearch.stages import merge as stage

    with stage_task(settings, ml_env=False) as run:
        digest = data_digest(lineage)
        return stage.run(lineage["raw_dir"], digest, out_dir=run.out("merged"), cfg=run.cfg, tags=run.tags)


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=30))
def drift(merged: dict, planned: list, settings: dict) -> dict:
    """This run's data against the champion's training data: label shares and each modality's
    embeddings. The report goes to MLflow, under the night's run; above `drift_threshold`, the run
    fails here, before training."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import drift as stage

    with stage_task(settings) as run:
        merged_dir, parent_run_id = merged["merged_dir"], planned[0]["parent_run_id"]
        return stage.run(merged_dir, parent_run_id=parent_run_id, out_dir=run.out("drift"), cfg=run.cfg, tags=run.tags)


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=60))
def transform(merged: dict, settings: dict) -> dict:
    """TensorFlow Transform on Beam: z-scores and pair cosines; TFRecords and the transform graph."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import transform as stage

    with stage_task(settings) as run:
        return stage.run(merged["merged_dir"], out_dir=run.out("transform"), cfg=run.cfg, tags=run.tags)


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=10))
def candidates(settings: dict) -> list:
    """Open this run's parent MLflow run; list the candidates (hyperparameter overrides)."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import candidates as stage

    with stage_task(settings) as run:
        return stage.run(out_dir=run.out("candidates"), cfg=run.cfg, tags=run.tags)


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=120))
def train(transformed: dict, candidate: dict, settings: dict) -> dict:
    """One candidate: Keras, a nested MLflow run, CodeCarbon; its validation metrics."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import train as stage

    with stage_task(settings) as run:
        return stage.run(transformed["transform_dir"], candidate, out_dir=run.out("train"), cfg=run.cfg, tags=run.tags)


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=120))
def baselines(transformed: dict, planned: list, settings: dict) -> dict:
    """The CLIP baseline (logistic regression on the cosines) and the original design's model."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import baselines as stage

    with stage_task(settings) as run:
        parent_run_id = planned[0]["parent_run_id"]
        return stage.run(
            transformed["transform_dir"], parent_run_id, out_dir=run.out("baselines"), cfg=run.cfg, tags=run.tags
        )


@task(execution_timeout=timedelta(minutes=5))
def select(trained: list, settings: dict) -> dict:
    """The candidate with the fewest parameters within one standard error of the best validation
    macro-F1 (reads no data, the test split least of all)."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import select as stage

    with stage_task(settings, ml_env=False) as run:
        return stage.run(list(trained), out_dir=run.out("select"), cfg=run.cfg, tags=run.tags)


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=30))
def evaluate(model: dict, baselines: dict, merged: dict, settings: dict) -> dict:
    """The selected model, every baseline and the champion, on the same test rows."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import evaluate as stage

    with stage_task(settings) as run:
        return stage.run(
            model, baselines, merged["merged_dir"], out_dir=run.out("evaluate"), cfg=run.cfg, tags=run.tags
        )


@task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=30))
def register(model: dict, scores: dict, lineage: dict, settings: dict) -> dict:
    """Register in MLflow as challenger; champion only if it beats every baseline and the champion."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import register as stage
    from mmsearch.summary import summary_text

    with stage_task(settings) as run:
        summary = stage.run(model, scores, lineage, out_dir=run.run_dir, cfg=run.cfg, tags=run.tags)
    print(summary_text(summary))  # relayed to this task's log
    return summary["registry"]


@task.external_python(**ML_ENV, trigger_rule="none_failed", execution_timeout=timedelta(minutes=10))
def promote(registry: dict, answer: dict | None, settings: dict) -> dict:
    """With `promotion: approve`, the person's answer: Approve moves the champion alias; Reject or
    no answer leaves the version challenger; who, when and why go on the version. Else nothing."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import promote as stage

    with stage_task(settings) as run:
        return stage.run(registry, answer, out_dir=run.run_dir, cfg=run.cfg, tags=run.tags)


@task(outlets=[CHAMPION_EVENTS], execution_timeout=timedelta(minutes=5))
def announce(registry: dict) -> bool:
    """When this run's version became champion: a champion-model asset event (the rank DAG runs on
    it) and a message to the team (the `mmsearch_alerts` connection, when there is one)."""
    promoted = registry["promoted"]
    if promoted:
        context = get_current_context()
        extra = {"registered_model": registry["registered_model"], "version": registry["version"]}
        context["outlet_events"][CHAMPION_EVENTS].add(CHAMPION_MODEL, extra=extra)
        alerts.champion_changed(context, registry)
    print(f"champion {'is now' if promoted else 'stays'} {registry['champion_version'] or 'none'}")
    return promoted


@task(execution_timeout=timedelta(minutes=30))
def clean_old_runs(registry: dict, settings: dict) -> dict:
    """Delete older runs' bulky intermediates: keep the last `keep_runs` and the champion's and
    challenger's runs; summaries, metrics and reports stay."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import clean_old_runs as stage

    with stage_task(settings, ml_env=False) as run:
        return stage.run(registry, out_dir=run.run_dir, cfg=run.cfg, tags=run.tags)


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
    default_args=default_args(retries=2),
    on_failure_callback=alerts.run_failed,
)
def mmsearch_training():
    settings = configure()
    with TaskGroup(
        "data", tooltip="DVC pull, the catalogue published, anything new?, contract checks, join and split, drift"
    ) as data:
        lineage = pull_data(settings)
        publish_catalogue(lineage, settings)  # beside the nothing-new check: skipped nights publish too
        proceed = anything_new(check_changes(lineage, settings), settings)
        report = validate(lineage, settings)
        merged = merge(lineage, settings)
        proceed >> report >> merged
    with TaskGroup(
        "model", tooltip="TensorFlow Transform, candidates, baselines, evaluation, MLflow registry, approval"
    ):
        transformed = transform(merged, settings)  # beside drift: neither waits for the other
        planned = candidates(settings)
        report >> planned  # no MLflow run for data that failed validation
        # a data task, logged under the night's MLflow run, which candidates opens
        drifted = drift.override(task_group=data)(merged, planned, settings)
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
        registered = register(model, scores, lineage, settings)
        approval = PromotionApproval(
            task_id="approve_promotion",
            registry=registered,
            settings=settings,
            notifiers=[alerts.PromotionAwaited()],
            doc_md=PromotionApproval.__doc__,
        )
        registry = promote(registered, approval.output, settings)
    announce(registry)
    clean_old_runs(registry, settings)


mmsearch_training()
