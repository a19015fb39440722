"""MLflow, in one place: the tracking set-up every ML stage uses, and scoring a logged pyfunc
over a merged split (what evaluate and the champion check in register both do)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from mmsearch import config, paths
from mmsearch.champion import CHAMPION, holder

log = logging.getLogger(__name__)


def setup(cfg: config.RunConfig):
    """mlflow, pointed at the tracking store and the run's experiment (created when missing)."""
    import mlflow

    # Bound MLflow's own HTTP retries (its default waits minutes); callers retry on top.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

    default_store = not os.environ.get("MLFLOW_TRACKING_URI")  # read first: set_tracking_uri sets it
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri())
    if mlflow.get_experiment_by_name(cfg.experiment_name) is None:
        # the embedded default keeps artifacts under MMSEARCH_HOME, not in ./mlruns of the cwd
        artifacts = paths.mlflow_artifact_root() if default_store else None
        mlflow.create_experiment(cfg.experiment_name, artifact_location=artifacts)
    experiment = mlflow.set_experiment(cfg.experiment_name)
    # MLflow's UI opens an experiment of this kind on its training runs (not the GenAI traces view)
    client = mlflow.MlflowClient()
    client.set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", "custom_model_development")
    return mlflow


def credentials_refused(error: BaseException) -> bool:
    """MLflow's server answered 401 or 403: wrong or missing credentials, not an outage."""
    text = str(error)
    return "error code 401" in text or "error code 403" in text


def refusal_line(error: BaseException) -> str:
    code = "401" if "error code 401" in str(error) else "403"
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(none)"
    return (
        f"MLflow at {paths.redact_uri(paths.mlflow_tracking_uri())} refused the credentials of user {user} "
        f"(HTTP {code}): check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )


def airflow_tags(tags: dict) -> dict:
    """MLflow run tags naming the Airflow DAG run (dag_id, run_id, logical_date)."""
    return {f"airflow.{k}": str(v) for k, v in tags.items() if v}


def run_tags(stage: str, tags: dict) -> dict:
    """The tags of a run a stage opens: the Airflow DAG run's; the stage as the run's Source (else
    MLflow names the temporary `script.py` an external-python task runs); the code's git commit."""
    commit = paths.git_commit()
    source = {"mlflow.source.name": f"mmsearch {stage}", "mlflow.source.type": "JOB"}
    return {**airflow_tags(tags), **source, **({"mlflow.source.git.commit": commit} if commit != "unknown" else {})}


def log_splits(mlflow, merged_dir: str, contexts: dict[str, str]) -> None:
    """The merged splits the active run reads, as MLflow datasets (the runs table's Dataset
    column): named by split, its directory as the source, the raw data's DVC md5 as the digest.
    `contexts`: split -> what the run does with it (training, validation, testing)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from mmsearch.io import read_json

    digest = read_json(Path(merged_dir) / "manifest.json").get("data_digest") or None
    for split, context in contexts.items():
        with warnings.catch_warnings():  # a local path matches two registered sources, the same class
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(merged_dir) / split))
        mlflow.log_input(MetaDataset(source, name=split, digest=digest), context=context)


def end_abandoned_runs(mlflow, cfg: config.RunConfig, airflow_run_id: str, run_name: str | None = None) -> None:
    """A killed attempt leaves its MLflow run RUNNING: mark it KILLED before the retry starts."""
    if not airflow_run_id:
        return
    named = f" and attributes.run_name = '{run_name}'" if run_name else ""
    running = f"tags.`airflow.run_id` = '{airflow_run_id}' and attributes.status = 'RUNNING'{named}"
    stale = mlflow.search_runs(experiment_names=[cfg.experiment_name], output_format="list", filter_string=running)
    for run in stale:
        log.warning("marking MLflow run %s of an earlier, killed attempt as KILLED", run.info.run_id)
        mlflow.MlflowClient().set_terminated(run.info.run_id, status="KILLED")


class PyfuncScorer:
    """A logged pyfunc, scoring Arrow tables of raw merged rows: probabilities [n, 4] in label-id
    order, and the labels it serves (its decision rule applied). The rows go to the pyfunc's own
    model as matrices: the transform graph and decision rule `predict` uses, without the
    DataFrame of arrays and its per-cell schema check (a third of evaluate's scoring time)."""

    def __init__(self, model_uri: str):
        import mlflow

        self.model_uri = model_uri
        signature = mlflow.models.get_model_info(model_uri).signature
        self.columns = [spec.name for spec in signature.inputs.inputs]  # the raw columns it reads
        self.served = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()

    def probabilities(self, table) -> np.ndarray:
        from mmsearch.serving import embedding_matrices

        return self.served.probabilities(embedding_matrices(table, self.columns))

    def __call__(self, table) -> tuple[np.ndarray, np.ndarray]:
        probabilities = self.probabilities(table)
        return probabilities, self.served.label_ids(probabilities)


def champion(cfg: config.RunConfig):
    """The registered model's version under the `champion` alias, or None."""
    import mlflow

    return holder(mlflow.MlflowClient(), cfg.registered_model_name, CHAMPION)
