"""Where things are: this project, the raw files' names, MMSEARCH_HOME and the runs under it, the
ML environment's interpreter, MLflow; and which environment variables hold secrets.

Light on purpose: the DAG files import it at parse time (the standard library only).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

SPLITS = ("train", "val", "test")

# Raw file names, relative to the raw data directory (the public data's own names).
ESCI_FILE = "shopping_queries_dataset_examples.parquet"
QUERY_FEATURES_FILE = "sqid/query_features.parquet"
PRODUCT_FEATURES_FILE = "sqid/product_features.parquet"
LEGACY_QUERY_CSV = "query_features_with_timestamp.csv"


def git(*args: str) -> str:
    """A git command's output in the checkout; empty where there is no git (or no repository)."""
    try:
        result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return ""
    return result.stdout if result.returncode == 0 else ""


def git_commit() -> str:
    """The checkout's commit: what every MLflow run and registered version records."""
    return git("rev-parse", "HEAD").strip() or "unknown"


def mmsearch_home() -> Path:
    """The one directory the embedded default writes to (MMSEARCH_HOME overrides)."""
    return Path(os.environ.get("MMSEARCH_HOME", REPO_ROOT / ".mmsearch")).resolve()


def ml_python() -> str:
    """The ML environment's interpreter (TensorFlow, Beam, MLflow), where the ML tasks run."""
    return os.environ.get("MMSEARCH_ML_PYTHON", str(REPO_ROOT / ".venvs" / "ml" / "bin" / "python"))


def runs_root() -> Path:
    return mmsearch_home() / "runs"


def run_dir_for(run_id: str) -> Path:
    """A directory per DAG run, so no run can overwrite another's outputs."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("._") or "run"
    return runs_root() / safe


def mlflow_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI wins; the embedded default is SQLite under MMSEARCH_HOME."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{mmsearch_home() / 'mlflow' / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    """A URI fit for logs and XCom: user and password removed."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# Environment variables whose values are secrets: masked in Airflow's task logs.
SECRET_ENV_VARS = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
)
# URLs that carry a password (the server stack sets them): the password is masked.
SECRET_URL_ENV_VARS = (
    "MLFLOW_TRACKING_URI",
    "MMSEARCH_AIRFLOW_DB_URL",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
)


def mlflow_artifact_root() -> str:
    return (mmsearch_home() / "mlflow" / "artifacts").as_uri()
