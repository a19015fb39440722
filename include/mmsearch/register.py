"""Stage 7, register: the MLflow model registry, with aliases and lineage.

Every new version gets the alias `challenger`. It also becomes `champion` only if
there is no champion yet, or if it beats the champion on `promotion_metric` with both
scored on this run's test split: the champion is loaded from the registry and scored
afresh, since the data may have changed since it was trained. A champion that cannot
be scored on this data keeps its alias, and the reason is logged.

Re-running the same DAG run finds the version it already registered and reuses it.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from mmsearch import config as C
from mmsearch.io import RegistryError

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
RUN_TAG = "airflow_run_id"
LOGICAL_DATE_TAG = "airflow_logical_date"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None = None
    champion_version: str | None = None


def decide(metric: str, challenger_score: float, champion_score: float | None, champion_error: str | None = None,
           champion_version: str | None = None) -> Decision:
    """The promotion rule: no champion, or strictly better on this run's test split."""
    if champion_version is None:
        return Decision(True, "no champion yet", challenger_score)
    if champion_error is not None:
        return Decision(False, f"champion v{champion_version} could not be scored on this data: {champion_error}",
                        challenger_score, None, champion_version)
    if challenger_score > champion_score:
        verdict, promote = "beats", True
    else:
        verdict, promote = "does not beat", False
    return Decision(promote, f"challenger {metric} {challenger_score:.4f} {verdict} champion v{champion_version} "
                    f"{champion_score:.4f}", challenger_score, champion_score, champion_version)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=C.REPO_ROOT, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lineage_tags(run: dict, feature_set: str, metrics: dict) -> dict:
    tags = {
        "git_commit": git_commit(),
        "airflow_dag_id": run.get("dag_id", ""),
        RUN_TAG: run.get("run_id", ""),
        LOGICAL_DATE_TAG: run.get("logical_date") or "",
        "feature_set": feature_set,
        "dvc_md5.raw": run.get("dvc", {}).get("dvc_md5", ""),
    }
    for path, md5 in run.get("dvc", {}).get("file_md5", {}).items():
        tags[f"dvc_md5.{path}"] = md5
    for key, value in metrics.items():
        tags[f"test_{key}"] = f"{value:.6f}"
    return tags


def _existing_version(client, name: str, run: dict):
    """The version this DAG run registered already: the same run_id (a cleared task), or the same
    DAG and logical date (`airflow dags test` again for that date, which makes a new run_id)."""
    if run.get("logical_date"):
        query = (f"tags.airflow_dag_id = '{run.get('dag_id', '')}' and "
                 f"tags.{LOGICAL_DATE_TAG} = '{run['logical_date']}'")
    elif run.get("run_id"):
        query = f"tags.{RUN_TAG} = '{run['run_id']}'"
    else:
        return None
    found = client.search_model_versions(f"name = '{name}' and {query}")
    return max(found, key=lambda v: int(v.version)) if found else None


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def score_champion(champion, merged_dir: Path, metric: str) -> tuple[float | None, str | None]:
    """The champion's `metric` on this run's test split, or the reason it cannot be scored."""
    import mlflow
    import pyarrow.dataset

    from mmsearch.evaluate import classification_metrics, score_model

    try:
        uri = f"models:/{champion.name}/{champion.version}"
        columns = [spec.name for spec in mlflow.models.get_model_info(uri).signature.inputs.inputs]
        available = pyarrow.dataset.dataset(Path(merged_dir) / "test").schema.names
        missing = [c for c in columns if c not in available]
        if missing:
            return None, f"this run's data has no column(s) {missing}"
        labels, query_ids, probabilities = score_model(uri, merged_dir, columns)
        return float(classification_metrics(labels, probabilities, query_ids)[metric]), None
    except Exception as error:  # any failure to load or score means "cannot be scored"
        return None, f"{type(error).__name__}: {error}"


def _unreachable(error: BaseException) -> bool:
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, requests.exceptions.RequestException | ConnectionError):
        return True
    text = str(error)
    return isinstance(error, MlflowException) and ("API request to" in text or "Max retries exceeded" in text)


def register(run: dict, train_summary: dict, evaluation: dict, merged_dir: Path, cfg: C.RunConfig,
             wait_seconds: float = 5.0) -> dict:
    """Register with retries and exponential backoff while MLflow is unreachable. Every step is
    safe to repeat (the version is found again by its run tag), and the champion alias moves last."""
    import tenacity

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, cfg.registry_attempts)),
        wait=tenacity.wait_exponential(multiplier=wait_seconds, max=120),
        retry=tenacity.retry_if_exception(_unreachable),
        before_sleep=lambda state: log.warning("MLflow unreachable (attempt %d): %s", state.attempt_number,
                                               str(state.outcome.exception()).splitlines()[0][:300]),
        reraise=True,
    )
    try:
        return retrying(_register_once, run, train_summary, evaluation, merged_dir, cfg)
    except Exception as error:
        if not _unreachable(error):
            raise
        raise RegistryError(
            f"MLflow tracking server {C.redact_uri(C.mlflow_tracking_uri())} unreachable after "
            f"{cfg.registry_attempts} attempts; nothing was promoted: {str(error).splitlines()[0][:300]}"
        ) from None


def _register_once(run: dict, train_summary: dict, evaluation: dict, merged_dir: Path, cfg: C.RunConfig) -> dict:
    from mlflow import MlflowClient

    from mmsearch.train import setup_mlflow

    mlflow = setup_mlflow(cfg)
    client = MlflowClient()
    name, metric = cfg.registered_model_name, cfg.promotion_metric
    metrics = evaluation["metrics"]["model"]
    version = _existing_version(client, name, run)
    if version is not None:
        log.info("this DAG run (%s) already registered %s v%s: reusing it", run.get("run_id"), name, version.version)
    else:
        tags = lineage_tags(run, train_summary["feature_set"], metrics)
        version = mlflow.register_model(train_summary["model_uri"], name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, version.version)

    champion = _champion(client, name)
    if champion is not None and champion.version == version.version:
        decision = Decision(False, f"v{version.version} is already the champion", metrics[metric])
    else:
        champion_score, error = (None, None) if champion is None else score_champion(champion, merged_dir, metric)
        decision = decide(metric, metrics[metric], champion_score, error, champion.version if champion else None)
        if decision.promote:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    client.set_model_version_tag(name, version.version, "promotion_decision", decision.reason)
    with mlflow.start_run(run_id=train_summary["mlflow_run_id"]):
        mlflow.set_tags({"registered_model": name, "registered_version": version.version,
                         "promotion_decision": decision.reason})
    aliases = sorted(client.get_model_version(name, version.version).aliases)
    log.info("registered %s v%s, aliases %s: %s", name, version.version, aliases, decision.reason)
    return {
        "registered_model": name,
        "version": version.version,
        "aliases": aliases,
        "promotion_metric": metric,
        "decision": asdict(decision),
        "test_metrics": metrics,
    }


def summary_text(summary: dict) -> str:
    """The run in a few lines, for the register task's log: metrics, version, alias decision."""
    registry = summary["registry"]
    lines = [f"mmsearch run {summary['run_id']}: {summary['rows']:,} judgements",
             f"{'test split':<18} {'accuracy':>9} {'macro_f1':>9} {'ndcg':>7}"]
    for name, metrics in summary["metrics"].items():
        lines.append(f"{name:<18} {metrics['accuracy']:>9.4f} {metrics['macro_f1']:>9.4f} {metrics['ndcg']:>7.4f}")
    lines.append(f"registered {registry['registered_model']} v{registry['version']}, "
                 f"aliases {', '.join(registry['aliases'])}: {registry['decision']['reason']}")
    lines.append(f"outputs: {summary['run_dir']}")
    return "\n".join(lines)
