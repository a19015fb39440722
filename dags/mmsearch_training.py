"""mmsearch_training: retrain the ESCI relevance model. Orchestration only.

The code each task runs lives in the `mmsearch` package (include/mmsearch), one module
per stage. Tasks import it inside their bodies; the TensorFlow side runs in the ML
environment through @task.external_python, so nothing heavy loads at parse time.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Param, TaskGroup, dag, get_current_context, task

from mmsearch.config import FEATURE_SETS, RunConfig

DEFAULTS = RunConfig()
REPO_ROOT = Path(__file__).resolve().parents[1]
ML_PYTHON = os.environ.get("MMSEARCH_ML_PYTHON", str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python"))

DOC_MD = """
### mmsearch_training

Retrains the product-search relevance model (ESCI labels E/S/C/I) from CLIP embeddings.

`pull_data` (DVC) → `validate` → `merge` → `transform` (TensorFlow Transform on Beam)
→ `train` (Keras, MLflow, CodeCarbon) → `evaluate` → `register` (MLflow registry).

Each run writes into its own directory under `$MMSEARCH_HOME/runs/<run_id>`; XCom
carries only paths, ids and metrics. Bad input fails `validate` or `merge` with the
file, column and rows at fault, and no retry.
"""


PARAM_DOCS = {
    "feature_set": "query: the original design (query embedding only). query_product: query, product text and image.",
    "raw_data_dir": "Raw ESCI/SQID directory used as it is (no DVC pull). Empty: pull data/raw of the DVC repo.",
    "dvc_repo": "DVC repository to pull from. Empty: this project.",
    "dvc_remote": "DVC remote name. Empty: the repository's default remote.",
    "dvc_pull_attempts": "Attempts at dvc pull (exponential backoff) before the task fails.",
    "query_features_source": "sqid (parquet) or legacy_csv (query_features_with_timestamp.csv).",
    "embedding_dim": "Expected embedding width.",
    "min_join_coverage": "Fail below this share of working-set judgements with all features.",
    "esci_filter_locale": "Working set: ESCI product_locale (empty: all).",
    "esci_filter_small_version": "Working set: only ESCI small_version rows.",
    "esci_filter_split": "Working set: ESCI split (empty: all).",
    "val_fraction": "Share of queries held out for validation.",
    "test_fraction": "Share of queries held out for test.",
    "seed": "Seed of the group split and of training.",
    "beam_pipeline_args": "Beam pipeline options, e.g. --runner=FlinkRunner --flink_master=...",
    "tfrecord_compression": "Transformed TFRecords: '' (none) or GZIP.",
    "transform_batch_rows": "Rows per Arrow record batch fed to TensorFlow Transform.",
    "batch_size": "Training batch size.",
    "epochs": "Maximum epochs (early stopping ends sooner).",
    "steps_per_epoch": "Training steps per epoch.",
    "validation_steps": "Validation steps per epoch (0: the whole validation split).",
    "patience": "Early-stopping patience in epochs (best weights restored).",
    "learning_rate": "Adam learning rate.",
    "dropout": "Dropout after the first dense layer.",
    "train_query_baseline": "In a query_product run, also train the query model as a baseline.",
    "codecarbon_country": "ISO country code for CodeCarbon's offline carbon intensity.",
    "registered_model_name": "MLflow registered model.",
    "experiment_name": "MLflow experiment.",
    "promotion_metric": "Test metric the challenger must beat the champion on.",
    "registry_attempts": "Attempts at registering (exponential backoff) while MLflow is unreachable.",
}
PARAM_ENUMS = {
    "feature_set": list(FEATURE_SETS),
    "query_features_source": ["sqid", "legacy_csv"],
    "tfrecord_compression": ["", "GZIP"],
    "promotion_metric": ["macro_f1", "micro_f1", "accuracy", "ndcg"],
}
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", tuple: "array"}


def _param(name: str) -> Param:
    default = getattr(DEFAULTS, name)
    schema = {"enum": PARAM_ENUMS[name]} if name in PARAM_ENUMS else {}
    if isinstance(default, tuple):
        default, schema = list(default), {"items": {"type": "string"}}
    return Param(default, type=JSON_TYPES[type(getattr(DEFAULTS, name))], description=PARAM_DOCS[name], **schema)


PARAMS = {field.name: _param(field.name) for field in dataclasses.fields(RunConfig)}


def _mask_credentials(context) -> None:
    """Mask credentials in every task's log, the ML tasks' relayed output included."""
    from airflow.sdk.log import mask_secret

    from mmsearch.config import SECRET_ENV_VARS, redact_uri

    for name in SECRET_ENV_VARS:
        if os.environ.get(name):
            mask_secret(os.environ[name], name)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri and redact_uri(uri) != uri:
        mask_secret(uri, "MLFLOW_TRACKING_URI")


def _fail_on_bad_input(error: Exception):
    """Bad input will not heal on retry: fail the task at once with the one-line reason."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(error))


# Tasks that run in the ML environment (TensorFlow, Beam, MLflow), not in Airflow's.
ML_ENV = {"python": ML_PYTHON, "expect_airflow": False}


@dag(
    dag_id="mmsearch_training",
    schedule="0 2 * * *",
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
    },
)
def mmsearch_training():
    with TaskGroup("data", tooltip="DVC pull, contract checks, join and group split"):

        @task(execution_timeout=timedelta(minutes=30))
        def pull_data() -> dict:
            """`dvc pull` of the raw data; fails naming every file DVC did not restore.
            With `raw_data_dir` set, that directory is used as it is and its files' md5s recorded."""
            from mmsearch import config as C
            from mmsearch.pull import describe_untracked, pull

            context = get_current_context()
            cfg = C.RunConfig.from_mapping(context["params"])
            if cfg.raw_data_dir:
                pulled = describe_untracked(cfg.raw_dir)
            else:
                pulled = pull(cfg.repo_dir, remote=cfg.dvc_remote, attempts=cfg.dvc_pull_attempts)
            run_id = context["dag_run"].run_id
            logical_date = context["dag_run"].logical_date
            return {
                "dag_id": context["dag"].dag_id,
                "run_id": run_id,
                "logical_date": logical_date.isoformat() if logical_date else "",
                "run_dir": str(C.run_dir_for(run_id)),
                "config": cfg.as_dict(),
                "raw_dir": pulled["raw_dir"],
                "dvc": pulled,
            }

        @task(execution_timeout=timedelta(minutes=30))
        def validate(run: dict) -> dict:
            """Schemas, dimensions, finite values, labels, unique keys, join coverage."""
            from mmsearch import validate as stage
            from mmsearch.config import RunConfig
            from mmsearch.io import DataError

            try:
                report = stage.run(run["raw_dir"], Path(run["run_dir"]) / "validate", RunConfig.from_mapping(run["config"]))
            except DataError as error:
                raise _fail_on_bad_input(error) from error
            return {**run, "validation": report}

        @task(execution_timeout=timedelta(minutes=60))
        def merge(run: dict) -> dict:
            """Join every judgement with its embeddings; split train/val/test by query."""
            from mmsearch import merge as stage
            from mmsearch.config import RunConfig
            from mmsearch.io import DataError

            try:
                manifest = stage.merge(run["raw_dir"], Path(run["run_dir"]) / "merged", RunConfig.from_mapping(run["config"]))
            except DataError as error:
                raise _fail_on_bad_input(error) from error
            return {**run, "merged": {k: manifest[k] for k in ("merged_dir", "rows", "splits", "embedding_columns")}}

        merged = merge(validate(pull_data()))

    with TaskGroup("model", tooltip="TensorFlow Transform, Keras, evaluation, MLflow registry"):

        @task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=60))
        def transform(run: dict) -> dict:
            """TensorFlow Transform on Beam: z-scores, cosines; TFRecords and the transform graph."""
            from pathlib import Path

            from mmsearch import transform as stage
            from mmsearch.config import RunConfig
            from mmsearch.io import log_to_stderr

            log_to_stderr()
            out = Path(run["run_dir"]) / "transform"
            manifest = stage.run_isolated(run["merged"]["merged_dir"], out, RunConfig.from_mapping(run["config"]))
            return {**run, "transform": {"transform_dir": str(out), "rows_out": manifest["rows_out"]}}

        @task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=120))
        def train(run: dict) -> dict:
            """Keras on the transformed data; MLflow run with CodeCarbon emissions."""
            from pathlib import Path

            from mmsearch import train as stage
            from mmsearch.config import RunConfig
            from mmsearch.io import log_to_stderr

            log_to_stderr()
            lineage = {"dag_id": run["dag_id"], "run_id": run["run_id"]}
            summary = stage.train(run["transform"]["transform_dir"], Path(run["run_dir"]) / "train",
                                  RunConfig.from_mapping(run["config"]), lineage)
            return {**run, "train": summary}

        @task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=30))
        def evaluate(run: dict) -> dict:
            """Test-split metrics of the model and the baselines, logged to the same MLflow run."""
            from pathlib import Path

            from mmsearch import evaluate as stage
            from mmsearch.config import RunConfig
            from mmsearch.io import log_to_stderr

            log_to_stderr()
            result = stage.evaluate(run["merged"]["merged_dir"], run["train"], Path(run["run_dir"]) / "evaluate",
                                    RunConfig.from_mapping(run["config"]))
            return {**run, "evaluation": result}

        @task.external_python(**ML_ENV, execution_timeout=timedelta(minutes=30))
        def register(run: dict) -> dict:
            """Register in MLflow; alias challenger, and champion only if it beats the champion."""
            from pathlib import Path

            from mmsearch import register as stage
            from mmsearch.config import RunConfig
            from mmsearch.io import log_to_stderr, write_json

            log_to_stderr()
            result = stage.register(run, run["train"], run["evaluation"], run["merged"]["merged_dir"],
                                    RunConfig.from_mapping(run["config"]))
            summary = {"run_id": run["run_id"], "run_dir": run["run_dir"], "registry": result,
                       "metrics": run["evaluation"]["metrics"], "rows": run["merged"]["rows"]}
            write_json(Path(run["run_dir"]) / "summary.json", summary)
            print(stage.summary_text(summary))  # relayed to this task's log
            return summary

        register(evaluate(train(transform(merged))))


mmsearch_training()
