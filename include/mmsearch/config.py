"""Paths, constants and the run configuration shared by every stage.

Light on purpose: the DAG file imports this module at parse time, so it must
never import anything heavier than the standard library.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path

from mmsearch.features import EMBEDDING_DIM, FEATURE_SETS

REPO_ROOT = Path(__file__).resolve().parents[2]

SPLITS = ("train", "val", "test")

# Raw file names, relative to the raw data directory (the public data's own names).
ESCI_FILE = "shopping_queries_dataset_examples.parquet"
QUERY_FEATURES_FILE = "sqid/query_features.parquet"
PRODUCT_FEATURES_FILE = "sqid/product_features.parquet"
LEGACY_QUERY_CSV = "query_features_with_timestamp.csv"


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
    *("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    *("GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING"),
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


class ConfigError(ValueError):
    """A setting unknown, out of its range or of the wrong kind: one line saying which."""


# The trigger form's sections, in the order the form shows them (most used first).
SECTIONS = ("Training", "Data", "Registry", "Transform")
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", tuple: "array", dict: "object"}
KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list"}
# JSON Schema keywords a setting may carry, as the DAG's Params and the config check read them.
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def setting(
    default,
    description: str,
    section: str,
    *,
    choices: tuple | None = None,
    optional: bool = False,
    items: type = str,
    fingerprint: bool = True,
    **bounds: float,
):
    """A RunConfig field with its description and allowed values, written once: the DAG's Params
    (the trigger form) and RunConfig.check are both built from this.

    `optional`: an empty value means "not set" (the form shows the field as not required).
    `items`: the type of a list setting's items (str or dict).
    `fingerprint`: whether the setting can change the model (part of a run's fingerprint: a
    registered version with the same fingerprint, data and code makes the run skip training).
    `bounds`: JSON Schema's minimum, maximum, exclusiveMinimum, exclusiveMaximum.
    """
    assert section in SECTIONS and set(bounds) <= set(BOUNDS), (section, bounds)
    meta = {"description": description, "section": section, "choices": choices, "optional": optional}
    meta |= {"items": items, "bounds": bounds, "fingerprint": fingerprint}
    return dataclasses.field(default=default, metadata=meta)


# a setting of each section, in SECTIONS' order
_training, _data, _registry, _transform = (functools.partial(setting, section=name) for name in SECTIONS)
FRACTION = {"exclusiveMinimum": 0, "exclusiveMaximum": 1}
AT_LEAST_ONE = {"minimum": 1}
# Two pair-model candidates, both started from the logistic regression on the cosines, with
# larger batches and a higher, cosine-decayed learning rate for speed on CPU: wide and deep,
# and the wide part alone (when the embeddings add nothing, validation says so).
DEFAULT_CANDIDATES = (
    {"batch_size": 256, "learning_rate": 0.003, "dropout": 0.2},
    {"batch_size": 256, "learning_rate": 0.003, "hidden_units": 0},
)


def overridden_by_candidates(name: str) -> str:
    """What the form says of a field the default candidates set for themselves."""
    values = [str(c[name]) for c in DEFAULT_CANDIDATES if name in c]
    if not values:
        return "The pair-model candidates use it unless they override it."
    return (
        f"The default pair-model candidates set their own ({', '.join(values)}): to change theirs, edit `candidates`."
    )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a DAG run can change: each field is a DAG param and a CLI `--set key=value`."""

    feature_set: str = _training(
        "query_product",
        "query_product: the pair model (query, product text and image embeddings, pair features). "
        "query: the original design's model, on the query embedding only.",
        choices=FEATURE_SETS,
    )
    candidates: tuple[dict, ...] = _training(
        DEFAULT_CANDIDATES,
        "Pair-model candidates, each trained as a mapped task and kept if best by validation "
        "macro-F1: hyperparameter overrides (batch_size, learning_rate, dropout, projection_dim, hidden_units, l2, "
        "class_weighting none|sqrt). An empty object trains the run's settings as they are.",
        items=dict,
    )
    decision_rule: str = _training(
        "macro_f1",
        "macro_f1: per-class weights on the probabilities fitted on validation for macro-F1 (stored "
        "with the model, applied when it serves). argmax: the most probable label.",
        choices=("macro_f1", "argmax"),
    )
    epochs: int = _training(50, "Maximum epochs (early stopping on validation loss ends sooner).", **AT_LEAST_ONE)
    batch_size: int = _training(
        32,
        "Training batch size (the original design's): the query model's. " + overridden_by_candidates("batch_size"),
        **AT_LEAST_ONE,
    )
    steps_per_epoch: int = _training(200, "Training steps per epoch.", **AT_LEAST_ONE)
    patience: int = _training(5, "Early-stopping patience in epochs (best weights restored).", minimum=0)
    learning_rate: float = _training(
        0.001,
        "Adam learning rate: the query model's. " + overridden_by_candidates("learning_rate"),
        exclusiveMinimum=0,
        maximum=1,
    )
    dropout: float = _training(
        0.3,
        "Dropout after the first dense layer: the query model's. " + overridden_by_candidates("dropout"),
        minimum=0,
        exclusiveMaximum=1,
    )
    validation_steps: int = _training(0, "Validation steps per epoch (0: the whole validation split).", minimum=0)
    train_query_baseline: bool = _training(
        True, "In a query_product run, also train the original design's query model, scored as a baseline."
    )
    seed: int = _training(42, "Seed of the group split and of training.", minimum=0)
    codecarbon_country: str = _training(
        "USA", "ISO 3166 alpha-3 country code for CodeCarbon's offline carbon intensity.", fingerprint=False
    )
    force_retrain: bool = _training(
        False,
        "Train even when a registered version was trained on the same data, code and settings "
        "(otherwise the run skips everything after pull_data, saying which version matched).",
        fingerprint=False,
    )
    raw_data_dir: str = _data(
        "",
        "A raw ESCI/SQID directory used as it is, without DVC. Empty: pull data/raw of the DVC repository.",
        optional=True,
        fingerprint=False,
    )
    dvc_repo: str = _data("", "DVC repository to pull from. Empty: this project.", optional=True, fingerprint=False)
    dvc_remote: str = _data(
        "", "DVC remote name. Empty: the repository's default remote.", optional=True, fingerprint=False
    )
    val_fraction: float = _data(0.15, "Share of queries held out for validation.", **FRACTION)
    test_fraction: float = _data(0.15, "Share of queries held out for test.", **FRACTION)
    esci_filter_locale: str = _data("us", "Working set: ESCI product_locale. Empty: every locale.", optional=True)
    esci_filter_small_version: bool = _data(True, "Working set: only ESCI small_version rows.")
    esci_filter_split: str = _data(
        "test", "Working set: the ESCI split SQID covers. Empty: both.", choices=("train", "test"), optional=True
    )
    min_join_coverage: float = _data(
        0.95, "Fail below this share of working-set judgements with every feature.", minimum=0, maximum=1
    )
    query_features_source: str = _data(
        "sqid",
        "sqid: the SQID parquet. legacy_csv: the older export query_features_with_timestamp.csv.",
        choices=("sqid", "legacy_csv"),
    )
    embedding_dim: int = _data(EMBEDDING_DIM, "Expected embedding width (CLIP ViT-L/14: 768).", **AT_LEAST_ONE)
    dvc_pull_attempts: int = _data(
        3, "Attempts at dvc pull, with exponential backoff, before the task fails.", fingerprint=False, **AT_LEAST_ONE
    )
    drift_threshold: float = _data(
        0.0,
        "Fail the run before training when any modality's embeddings drift beyond this from the champion's "
        "training data (the ROC AUC of a classifier telling the two apart, 0.5: no drift). 0: report only.",
        fingerprint=False,
        minimum=0,
        maximum=1,
    )
    registered_model_name: str = _registry("mmsearch-esci", "MLflow registered model.", fingerprint=False)
    experiment_name: str = _registry("mmsearch-esci", "MLflow experiment.", fingerprint=False)
    promotion_metric: str = _registry(
        "macro_f1",
        "Test metric of the gate: a new version becomes champion if no baseline is significantly better on it "
        "and it is significantly better than the champion (95 % intervals, paired bootstrap over test queries).",
        choices=("macro_f1", "micro_f1", "accuracy", "ndcg"),
    )
    min_improvement: float = _registry(
        0.0,
        "A challenger replaces the champion only if the lower 95 % bound of its promotion_metric's difference "
        "from the champion (a paired bootstrap over test queries) is above this.",
        fingerprint=False,
        minimum=0,
        maximum=1,
    )
    promotion: str = _registry(
        "auto",
        "auto: the gate moves the champion alias itself. approve: a promotion the gate grants waits for a "
        "person to approve it in the Airflow UI (the model.approve_promotion task's Required Actions).",
        choices=("auto", "approve"),
        fingerprint=False,
    )
    approval_timeout_hours: float = _registry(
        24.0,
        "With promotion approve: hours to wait for a person; no answer by then rejects the promotion "
        "(the version stays challenger).",
        fingerprint=False,
        exclusiveMinimum=0,
        maximum=720,
    )
    bootstrap_resamples: int = _registry(
        1000,
        "Resamples of the test split's query groups behind every interval and the gate.",
        fingerprint=False,
        minimum=1000,
    )
    registry_attempts: int = _registry(
        3,
        "Attempts at registering, with exponential backoff, while MLflow is unreachable.",
        fingerprint=False,
        **AT_LEAST_ONE,
    )
    keep_runs: int = _registry(
        2,
        "After a successful run, delete the bulky intermediates (merged shards, transformed examples, "
        "checkpoints) of older runs but the last this many and those the champion and challenger came from.",
        fingerprint=False,
        minimum=1,
    )
    # The DirectRunner's own in-process engine, named outright: the DirectRunner first tries to
    # download the Prism runner binary, which an offline machine cannot.
    beam_pipeline_args: tuple[str, ...] = _transform(
        ("--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner", "--direct_num_workers=1"),
        "Beam pipeline options, e.g. --runner=FlinkRunner --flink_master=host:8081.",
        fingerprint=False,
    )
    transform_batch_rows: int = _transform(
        2000, "Rows per Arrow record batch fed to TensorFlow Transform.", fingerprint=False, **AT_LEAST_ONE
    )

    @classmethod
    def from_mapping(cls, values: dict) -> RunConfig:
        """Build from DAG params or CLI JSON: an unknown key is an error, None means the default."""
        import difflib

        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                raise ConfigError(f"unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        kwargs = {key: value for key, value in values.items() if value is not None}
        if isinstance(kwargs.get("beam_pipeline_args"), str):
            kwargs["beam_pipeline_args"] = kwargs["beam_pipeline_args"].split()
        for name in ("beam_pipeline_args", "candidates"):  # JSON lists, kept as tuples (frozen config)
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        for field in dataclasses.fields(cls):  # JSON has one number type: 1 is a valid float setting
            if isinstance(field.default, float) and type(kwargs.get(field.name)) is int:
                kwargs[field.name] = float(kwargs[field.name])
        config = cls(**kwargs)
        config.check()
        return config

    def check(self) -> None:
        for field in dataclasses.fields(self):
            check_setting(field, getattr(self, field.name))
        from mmsearch.model import Hyperparameters  # light: dataclasses only

        for overrides in self.candidates:
            try:
                Hyperparameters.for_candidate(overrides)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"candidates: {error}") from None
        if not self.val_fraction + self.test_fraction < 1:
            fractions = f"{self.val_fraction} + {self.test_fraction}"
            raise ConfigError(f"val_fraction + test_fraction must be below 1, not {fractions}")

    def model_settings(self) -> dict:
        """The settings that can change the model: the config part of a run's fingerprint."""
        data = self.as_dict()
        return {f.name: data[f.name] for f in dataclasses.fields(self) if f.metadata["fingerprint"]}

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["beam_pipeline_args"] = list(self.beam_pipeline_args)
        data["candidates"] = [dict(c) for c in self.candidates]
        return data

    @property
    def raw_dir(self) -> Path:
        """raw_data_dir when set, else the DVC-tracked data/raw of the DVC repository."""
        return Path(self.raw_data_dir) if self.raw_data_dir else self.repo_dir / "data" / "raw"

    @property
    def repo_dir(self) -> Path:
        return Path(self.dvc_repo) if self.dvc_repo else REPO_ROOT


def check_setting(field: dataclasses.Field, value) -> None:
    """The type, choices and bounds a setting's metadata declares."""
    meta, expected = field.metadata, type(field.default)
    if type(value) is not expected:
        raise ConfigError(f"{field.name} must be {KINDS[expected]}, not {value!r}")
    if expected is tuple and not all(isinstance(item, meta["items"]) for item in value):
        raise ConfigError(f"{field.name} must be a list of {JSON_TYPES[meta['items']]}s, not {list(value)!r}")
    if meta["choices"] and value not in meta["choices"] and not (meta["optional"] and value == ""):
        raise ConfigError(f"{field.name} must be one of {list(meta['choices'])}, not {value!r}")
    tests = {"minimum": (float.__ge__, "≥"), "maximum": (float.__le__, "≤")}
    tests |= {"exclusiveMinimum": (float.__gt__, ">"), "exclusiveMaximum": (float.__lt__, "<")}
    for key, bound in meta["bounds"].items():
        holds, sign = tests[key]
        if not holds(float(value), float(bound)):
            raise ConfigError(f"{field.name} must be {sign} {bound}, not {value!r}")


def param_schema(field: dataclasses.Field) -> dict:
    """The JSON Schema of one setting, as Airflow's Param and trigger form take it."""
    meta = field.metadata
    json_type = JSON_TYPES[type(field.default)]
    schema = {"type": [json_type, "null"] if meta["optional"] else json_type, "description": meta["description"]}
    schema |= {"section": meta["section"], **meta["bounds"]}
    if meta["choices"]:
        schema["enum"] = list(meta["choices"]) + ([None] if meta["optional"] else [])
    if json_type == "array":
        schema["items"] = {"type": JSON_TYPES[meta["items"]]}
    return schema


def param_default(field: dataclasses.Field):
    """The form's default: an optional setting left empty is null (not a missing string)."""
    if field.metadata["optional"] and field.default == "":
        return None
    if isinstance(field.default, tuple):
        return [dict(item) if isinstance(item, dict) else item for item in field.default]
    return field.default


def params_by_section() -> list[dataclasses.Field]:
    """Every setting, ordered by the form's sections, declaration order within each."""
    fields = dataclasses.fields(RunConfig)
    return sorted(fields, key=lambda f: SECTIONS.index(f.metadata["section"]))
