"""The run configuration: every setting a DAG run can change, declared once with its section,
description and allowed values. The DAG's Params (the trigger form), the CLI's `--set` and
`RunConfig.check` are all built from these declarations (their JSON Schema: config_schema).

Light on purpose: the DAG file imports this module at parse time, so it must never import
anything heavier than the standard library.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmsearch.config_schema import (
    SECTIONS,
    ConfigError,
    check_setting,
    data_setting,
    registry_setting,
    training_setting,
    transform_setting,
)
from mmsearch.features import EMBEDDING_DIM, FEATURE_SETS
from mmsearch.paths import REPO_ROOT

FRACTION = {"exclusiveMinimum": 0, "exclusiveMaximum": 1}
AT_LEAST_ONE = {"minimum": 1}
# Two pair-model candidates, both wide and deep, started from the logistic regression on the
# cosines, with larger batches and a higher, cosine-decayed learning rate for speed on CPU: one
# reads 32 whitened components, one 128. A catalogue of a few dozen product types, or little
# data, needs few; thousands of types, or more data, more: validation says which (docs/design.md,
# The model). When the embeddings add nothing, a deep candidate keeps its starting regression (the
# wide part alone, which no longer trains as a candidate of its own). Their schedule is 25 epochs
# (at most the run's), the learning rate decayed over them: at 182k pairs of either bundled
# generator, 25 scored on validation what 50 did (15 lost 0.03 of macro-F1 on one), in half the
# time (docs/sample-data.md, How many whitened components it needs).
DEFAULT_CANDIDATES = (
    {"batch_size": 256, "learning_rate": 0.003, "dropout": 0.2, "components": 32, "epochs": 25},
    {"batch_size": 256, "learning_rate": 0.003, "dropout": 0.2, "components": 128, "epochs": 25},
)


def overridden_by_candidates(name: str) -> str:
    """What the form says of a field the default candidates set for themselves."""
    values = [str(c[name]) for c in DEFAULT_CANDIDATES if name in c]
    if not values:
        return "The pair-model candidates use it unless they override it."
    return (
        f"The registered pair model's default candidates set their own ({', '.join(values)}): to change "
        "theirs, edit `candidates`."
    )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a DAG run can change: each field is a DAG param and a CLI `--set key=value`."""

    feature_set: str = training_setting(
        "query_product",
        "query_product: the pair model (query, product text and image embeddings, pair features). "
        "query: the original design's model, on the query embedding only.",
        choices=FEATURE_SETS,
    )
    candidates: tuple[dict, ...] = training_setting(
        DEFAULT_CANDIDATES,
        "Pair-model candidates, each trained as a mapped task; select keeps the one with the fewest parameters "
        "within one standard error of the best validation macro-F1. Hyperparameter overrides (batch_size, "
        "learning_rate, dropout, projection_dim, hidden_units, l2, class_weighting none|sqrt, components: the "
        "whitened components the model reads, 1-128; epochs: its schedule, at most the run's). An empty object "
        "trains the run's settings as they are.",
        items=dict,
    )
    decision_rule: str = training_setting(
        "macro_f1",
        "macro_f1: per-class weights on the probabilities fitted on validation for macro-F1 (stored "
        "with the model, applied when it serves). argmax: the most probable label.",
        choices=("macro_f1", "argmax"),
    )
    epochs: int = training_setting(
        50,
        "Maximum epochs of any model (early stopping on validation loss ends sooner). The pair model's default "
        "candidates train at most 25, their own schedule, or this if it is fewer.",
        **AT_LEAST_ONE,
    )
    batch_size: int = training_setting(
        32,
        "Query model only (the original design, kept for comparison): its batch size. "
        + overridden_by_candidates("batch_size"),
        **AT_LEAST_ONE,
    )
    steps_per_epoch: int = training_setting(200, "Training steps per epoch.", **AT_LEAST_ONE)
    patience: int = training_setting(5, "Early-stopping patience in epochs (best weights restored).", minimum=0)
    learning_rate: float = training_setting(
        0.001,
        "Query model only (the original design, kept for comparison): its Adam learning rate. "
        + overridden_by_candidates("learning_rate"),
        exclusiveMinimum=0,
        maximum=1,
    )
    dropout: float = training_setting(
        0.3,
        "Query model only (the original design, kept for comparison): its dropout after the first dense layer. "
        + overridden_by_candidates("dropout"),
        minimum=0,
        exclusiveMaximum=1,
    )
    validation_steps: int = training_setting(
        0, "Validation steps per epoch (0: the whole validation split).", minimum=0
    )
    train_query_baseline: bool = training_setting(
        True, "In a query_product run, also train the original design's query model, scored as a baseline."
    )
    seed: int = training_setting(42, "Seed of the group split and of training.", minimum=0)
    codecarbon_country: str = training_setting(
        "USA", "ISO 3166 alpha-3 country code for CodeCarbon's offline carbon intensity.", fingerprint=False
    )
    force_retrain: bool = training_setting(
        False,
        "Train even when a registered version was trained on the same data, code and settings "
        "(otherwise the run skips everything after pull_data, saying which version matched).",
        fingerprint=False,
    )
    raw_data_dir: str = data_setting(
        "",
        "A raw ESCI/SQID directory used as it is, without DVC. Empty: pull data/raw of the DVC repository.",
        optional=True,
        fingerprint=False,
    )
    dvc_repo: str = data_setting(
        "", "DVC repository to pull from. Empty: this project.", optional=True, fingerprint=False
    )
    dvc_remote: str = data_setting(
        "", "DVC remote name. Empty: the repository's default remote.", optional=True, fingerprint=False
    )
    val_fraction: float = data_setting(0.15, "Share of queries held out for validation.", **FRACTION)
    test_fraction: float = data_setting(0.15, "Share of queries held out for test.", **FRACTION)
    esci_filter_locale: str = data_setting(
        "us", "Working set: ESCI product_locale. Empty: every locale.", optional=True
    )
    esci_filter_small_version: bool = data_setting(True, "Working set: only ESCI small_version rows.")
    esci_filter_split: str = data_setting(
        "test", "Working set: the ESCI split SQID covers. Empty: both.", choices=("train", "test"), optional=True
    )
    min_join_coverage: float = data_setting(
        0.95, "Fail below this share of working-set judgements with every feature.", minimum=0, maximum=1
    )
    query_features_source: str = data_setting(
        "sqid",
        "sqid: the SQID parquet. legacy_csv: the older export query_features_with_timestamp.csv.",
        choices=("sqid", "legacy_csv"),
    )
    embedding_dim: int = data_setting(EMBEDDING_DIM, "Expected embedding width (CLIP ViT-L/14: 768).", **AT_LEAST_ONE)
    dvc_pull_attempts: int = data_setting(
        3, "Attempts at dvc pull, with exponential backoff, before the task fails.", fingerprint=False, **AT_LEAST_ONE
    )
    drift_threshold: float = data_setting(
        0.0,
        "Fail the run before training when any modality's embeddings drift beyond this from the champion's "
        "training data (the ROC AUC of a classifier telling the two apart, 0.5: no drift). 0: report only.",
        fingerprint=False,
        minimum=0,
        maximum=1,
    )
    registered_model_name: str = registry_setting("mmsearch-esci", "MLflow registered model.", fingerprint=False)
    experiment_name: str = registry_setting("mmsearch-esci", "MLflow experiment.", fingerprint=False)
    promotion_metric: str = registry_setting(
        "macro_f1",
        "Test metric of the gate: a new version becomes champion if no baseline is significantly better on it "
        "and it is significantly better than the champion (95 % intervals, paired bootstrap over test queries).",
        choices=("macro_f1", "micro_f1", "accuracy", "ndcg"),
    )
    min_improvement: float = registry_setting(
        0.0,
        "A challenger replaces the champion only if the lower 95 % bound of its promotion_metric's difference "
        "from the champion (a paired bootstrap over test queries) is above this.",
        fingerprint=False,
        minimum=0,
        maximum=1,
    )
    promotion: str = registry_setting(
        "auto",
        "auto: the gate moves the champion alias itself. approve: a promotion the gate grants waits for a "
        "person to approve it in the Airflow UI (the model.approve_promotion task's Required Actions).",
        choices=("auto", "approve"),
        fingerprint=False,
    )
    approval_timeout_hours: float = registry_setting(
        24.0,
        "With promotion approve: hours to wait for a person; no answer by then rejects the promotion "
        "(the version stays challenger).",
        fingerprint=False,
        exclusiveMinimum=0,
        maximum=720,
    )
    bootstrap_resamples: int = registry_setting(
        1000,
        "Resamples of the test split's query groups behind every interval and the gate.",
        fingerprint=False,
        minimum=1000,
    )
    registry_attempts: int = registry_setting(
        3,
        "Attempts at registering, with exponential backoff, while MLflow is unreachable.",
        fingerprint=False,
        **AT_LEAST_ONE,
    )
    keep_runs: int = registry_setting(
        2,
        "After a successful run, delete the bulky intermediates (merged shards, transformed examples, "
        "checkpoints) of older runs but the last this many and those the champion and challenger came from.",
        fingerprint=False,
        minimum=1,
    )
    # The DirectRunner's own in-process engine, named outright: the DirectRunner first tries to
    # download the Prism runner binary, which an offline machine cannot.
    beam_pipeline_args: tuple[str, ...] = transform_setting(
        ("--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner", "--direct_num_workers=1"),
        "Beam pipeline options, e.g. --runner=FlinkRunner --flink_master=host:8081.",
        fingerprint=False,
    )
    transform_batch_rows: int = transform_setting(
        2000, "Rows per Arrow record batch fed to TensorFlow Transform.", fingerprint=False, **AT_LEAST_ONE
    )

    @classmethod
    def from_mapping(cls, values: dict) -> RunConfig:
        """Build from DAG params or CLI JSON: an unknown key is an error, None means the default."""
        import difflib

        fields = dataclasses.fields(cls)
        names = [field.name for field in fields]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                raise ConfigError(f"unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        kwargs = {
            field.name: _from_json(field, values[field.name]) for field in fields if values.get(field.name) is not None
        }
        config = cls(**kwargs)
        config.check()
        return config

    def check(self) -> None:
        for field in dataclasses.fields(self):
            check_setting(field, getattr(self, field.name))
        from mmsearch.models import Hyperparameters  # light: dataclasses only

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
        settings = self.as_dict()
        return {field.name: settings[field.name] for field in dataclasses.fields(self) if field.metadata["fingerprint"]}

    def as_dict(self) -> dict:
        """As JSON keeps it: the list settings as lists."""
        return {
            name: list(value) if isinstance(value, tuple) else value for name, value in dataclasses.asdict(self).items()
        }

    @property
    def raw_dir(self) -> Path:
        """raw_data_dir when set, else the DVC-tracked data/raw of the DVC repository."""
        return Path(self.raw_data_dir) if self.raw_data_dir else self.repo_dir / "data" / "raw"

    @property
    def repo_dir(self) -> Path:
        return Path(self.dvc_repo) if self.dvc_repo else REPO_ROOT


# the registered model of the default configuration: what the stack, the service and the tools name
REGISTERED_MODEL = RunConfig().registered_model_name


def _from_json(field: dataclasses.Field, value):
    """A setting as JSON gives it (DAG params, `--set key=value`), as the field keeps it: a list as
    a tuple (the configuration is frozen), an integer as a float where the field is one (JSON has
    one number type), and a list of strings given as one string (`--set beam_pipeline_args="--a
    --b"`) split at its spaces."""
    if isinstance(field.default, tuple) and isinstance(value, str):
        return tuple(value.split())
    if isinstance(field.default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(field.default, float) and type(value) is int:
        return float(value)
    return value


def params_by_section() -> list[dataclasses.Field]:
    """Every setting, ordered by the form's sections, declaration order within each."""
    fields = dataclasses.fields(RunConfig)
    return sorted(fields, key=lambda f: SECTIONS.index(f.metadata["section"]))
