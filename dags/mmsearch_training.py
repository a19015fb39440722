"""mmsearch_training: retrain the ESCI relevance model. Orchestration only.

The code each task runs lives in the `mmsearch` package (include/mmsearch), one module
per stage. Tasks import it inside their bodies; the TensorFlow side runs in the ML
environment through @task.external_python, so nothing heavy loads at parse time.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

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


def _param(default, description: str, **schema) -> Param:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}[type(default)]
    return Param(default, type=kind, description=description, **schema)


PARAMS = {
    "feature_set": _param(
        DEFAULTS.feature_set,
        "query: the original design (query embedding only). query_product: query, product text and image.",
        enum=list(FEATURE_SETS),
    ),
    "raw_data_dir": _param("", "Raw ESCI/SQID directory. Empty: data/raw of the DVC repo."),
    "dvc_repo": _param("", "DVC repository to pull from. Empty: this project."),
    "dvc_remote": _param("", "DVC remote name. Empty: the repository's default remote."),
    "query_features_source": _param(DEFAULTS.query_features_source, "sqid or legacy_csv", enum=["sqid", "legacy_csv"]),
    "embedding_dim": _param(DEFAULTS.embedding_dim, "Expected embedding width.", minimum=1),
    "min_join_coverage": _param(DEFAULTS.min_join_coverage, "Fail below this share of joinable judgements.",
                                minimum=0, maximum=1),
    "val_fraction": _param(DEFAULTS.val_fraction, "Share of queries held out for validation.", minimum=0, maximum=1),
    "test_fraction": _param(DEFAULTS.test_fraction, "Share of queries held out for test.", minimum=0, maximum=1),
    "seed": _param(DEFAULTS.seed, "Seed of the group split and of training."),
}


def _fail_on_bad_input(error: Exception):
    """Bad input will not heal on retry: fail the task at once with the one-line reason."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(error))


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
    },
)
def mmsearch_training():
    @task(execution_timeout=timedelta(minutes=30))
    def pull_data() -> dict:
        """`dvc pull` of the raw data; fails naming every file DVC did not restore."""
        from mmsearch import config as C
        from mmsearch.pull import pull

        context = get_current_context()
        cfg = C.RunConfig.from_mapping(context["params"])
        pulled = pull(cfg.repo_dir, remote=cfg.dvc_remote)
        run_id = context["dag_run"].run_id
        return {
            "dag_id": context["dag"].dag_id,
            "run_id": run_id,
            "run_dir": str(C.run_dir_for(run_id)),
            "config": cfg.as_dict(),
            "raw_dir": str(cfg.raw_dir) if cfg.raw_data_dir else pulled["raw_dir"],
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

    merge(validate(pull_data()))


mmsearch_training()
