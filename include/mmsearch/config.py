"""Paths, constants and the run configuration shared by every stage.

Light on purpose: the DAG file imports this module at parse time, so it must
never import anything heavier than the standard library.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# ESCI label map kept from the original design, and the ESCI gains for ranking.
LABEL_IDS = {"I": 0, "C": 1, "S": 2, "E": 3}
LABELS_BY_ID = {v: k for k, v in LABEL_IDS.items()}
ESCI_GAINS = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}
NUM_CLASSES = len(LABEL_IDS)

EMBEDDING_DIM = 768
SPLITS = ("train", "val", "test")
FEATURE_SETS = ("query", "query_product")

# Raw file names, relative to the raw data directory (the public data's own names).
ESCI_FILE = "shopping_queries_dataset_examples.parquet"
QUERY_FEATURES_FILE = "sqid/query_features.parquet"
PRODUCT_FEATURES_FILE = "sqid/product_features.parquet"
LEGACY_QUERY_CSV = "query_features_with_timestamp.csv"

# Merged-data column names.
QUERY_EMBEDDING = "query_embedding"
PRODUCT_TEXT_EMBEDDING = "product_text_embedding"
PRODUCT_IMAGE_EMBEDDING = "product_image_embedding"
EMBEDDING_COLUMNS = {
    "query": (QUERY_EMBEDDING,),
    "query_product": (QUERY_EMBEDDING, PRODUCT_TEXT_EMBEDDING, PRODUCT_IMAGE_EMBEDDING),
}


def mmsearch_home() -> Path:
    """The one directory the embedded default writes to (MMSEARCH_HOME overrides)."""
    return Path(os.environ.get("MMSEARCH_HOME", REPO_ROOT / ".mmsearch")).resolve()


def default_raw_dir() -> Path:
    return REPO_ROOT / "data" / "raw"


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
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING",
)


def mlflow_artifact_root() -> str:
    return (mmsearch_home() / "mlflow" / "artifacts").as_uri()


class ConfigError(ValueError):
    """A setting out of its range or of the wrong kind."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a DAG run can change; the DAG's Params are built from these defaults."""

    feature_set: str = "query_product"
    raw_data_dir: str = ""  # empty: the DVC-tracked data/raw of this repo
    dvc_repo: str = ""  # empty: this repo
    dvc_remote: str = ""  # empty: the repo's default remote
    dvc_pull_attempts: int = 3  # in-task retries with exponential backoff, before Airflow's own
    query_features_source: str = "sqid"  # "sqid" parquet, or the older "legacy_csv" export
    embedding_dim: int = EMBEDDING_DIM
    min_join_coverage: float = 0.95
    # the SQID working set: the ESCI rows that SQID has embeddings for
    esci_filter_locale: str = "us"
    esci_filter_small_version: bool = True
    esci_filter_split: str = "test"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    # TensorFlow Transform / Beam
    # The DirectRunner's own in-process engine, named outright: the DirectRunner first tries
    # to download the Prism runner binary, which an offline machine cannot.
    beam_pipeline_args: tuple[str, ...] = (
        "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner",
        "--direct_num_workers=1",
    )
    tfrecord_compression: str = ""  # "" (none) or "GZIP"
    transform_batch_rows: int = 2000
    # training: the original design's defaults
    batch_size: int = 32
    epochs: int = 50
    steps_per_epoch: int = 200
    validation_steps: int = 0  # 0: the whole validation split
    patience: int = 5
    learning_rate: float = 0.001
    dropout: float = 0.3
    train_query_baseline: bool = True
    codecarbon_country: str = "USA"
    # registry
    registered_model_name: str = "mmsearch-esci"
    experiment_name: str = "mmsearch-esci"
    promotion_metric: str = "macro_f1"
    registry_attempts: int = 3  # register: retries with exponential backoff when MLflow is unreachable

    @classmethod
    def from_mapping(cls, values: dict) -> "RunConfig":
        """Build from DAG params or CLI JSON: an unknown key is an error, None means the default."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"unknown settings: {unknown}")
        kwargs = {key: value for key, value in values.items() if value is not None}
        if isinstance(kwargs.get("beam_pipeline_args"), str):
            kwargs["beam_pipeline_args"] = kwargs["beam_pipeline_args"].split()
        if "beam_pipeline_args" in kwargs:
            kwargs["beam_pipeline_args"] = tuple(kwargs["beam_pipeline_args"])
        config = cls(**kwargs)
        config.check()
        return config

    def check(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise ConfigError(f"feature_set must be one of {FEATURE_SETS}, not {self.feature_set!r}")
        if not 0 < self.val_fraction + self.test_fraction < 1:
            raise ConfigError("val_fraction + test_fraction must lie strictly between 0 and 1")
        if self.query_features_source not in ("sqid", "legacy_csv"):
            raise ConfigError("query_features_source must be 'sqid' or 'legacy_csv'")
        if self.tfrecord_compression not in ("", "GZIP"):
            raise ConfigError("tfrecord_compression must be '' or 'GZIP'")

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["beam_pipeline_args"] = list(self.beam_pipeline_args)
        return data

    @property
    def raw_dir(self) -> Path:
        return Path(self.raw_data_dir) if self.raw_data_dir else default_raw_dir()

    @property
    def repo_dir(self) -> Path:
        return Path(self.dvc_repo) if self.dvc_repo else REPO_ROOT
