"""What a registered version came from, as its tags: the data (md5 and source URL of each raw
file), the code, the run's fingerprint, the Airflow run and its directory (retention keeps the
champion's; drift and rank read its merged data)."""

from __future__ import annotations

import hashlib
import json

from mmsearch import config, paths
from mmsearch.fingerprint import TAG as FINGERPRINT_TAG
from mmsearch.fingerprint import fingerprint

RUN_TAG = "airflow_run_id"
LOGICAL_DATE_TAG = "airflow_logical_date"
RUN_DIR_TAG = "run_dir"


def lineage_tags(lineage: dict, tags: dict, model: dict, metrics: dict, cfg: config.RunConfig, run_dir: str) -> dict:
    """What the version came from: data (md5 and source URL of each file), code, settings, run."""
    found = {
        "git_commit": paths.git_commit(),
        RUN_DIR_TAG: str(run_dir),
        "airflow_dag_id": tags.get("dag_id", ""),
        RUN_TAG: tags.get("run_id", ""),
        LOGICAL_DATE_TAG: tags.get("logical_date") or "",
        "feature_set": model["feature_set"],
        "candidate": str(model.get("candidate", "")),
        "weights_sha256": model.get("weights_sha256", ""),
        "dvc_md5.raw": lineage.get("dvc_md5", ""),
    }
    if lineage.get("file_md5"):  # without the data's lineage (a CLI call without --lineage) no fingerprint
        found[FINGERPRINT_TAG] = fingerprint(lineage, cfg)["fingerprint"]
    for path, md5 in lineage.get("file_md5", {}).items():
        found[f"dvc_md5.{path}"] = md5
    for path, url in lineage.get("sources", {}).items():
        found[f"source.{path}"] = paths.redact_uri(url)
    for key, value in metrics.items():
        found[f"test_{key}"] = f"{value:.6f}"
    return found


def existing_version(client, name: str, tags: dict):
    """The version this DAG run registered already: the same run_id (a cleared task), or the same
    DAG and logical date (`airflow dags test` again for that date, which makes a new run_id)."""
    if tags.get("logical_date"):
        query = (
            f"tags.airflow_dag_id = '{tags.get('dag_id', '')}' and tags.{LOGICAL_DATE_TAG} = '{tags['logical_date']}'"
        )
    elif tags.get("run_id"):
        query = f"tags.{RUN_TAG} = '{tags['run_id']}'"
    else:
        return None
    found = client.search_model_versions(f"name = '{name}' and {query}")
    return max(found, key=lambda v: int(v.version)) if found else None


def data_digest(lineage: dict) -> str:
    """The raw data's identity, which the MLflow datasets of its splits carry as their digest:
    DVC's hash of it, or (a directory given directly, not pulled) a hash of its files' md5s."""
    if lineage.get("dvc_md5"):
        return lineage["dvc_md5"]
    return hashlib.md5(json.dumps(sorted(lineage.get("file_md5", {}).items())).encode()).hexdigest()
