"""Fitting one Keras model inside an MLflow run, measured by CodeCarbon: the pair model's
candidates (stage `train`) and the original design's query model (stage `baselines`) both go
through `train_and_log`. Checkpoints are written every epoch; Keras' BackupAndRestore lets a
retried task continue from the last finished epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsearch import config, datasets, features, models, representation, tracking
from mmsearch.io import atomic_dir, read_json, write_json
from mmsearch.plots import plot_training_curves

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "crossentropy", "val_crossentropy")


def wide_init(transform_manifest: dict, components: int) -> tuple[np.ndarray, np.ndarray]:
    """The wide part's starting weights: a logistic regression on the train split's pair features
    (the z-scored cosines, the cosines of the whitened vectors' first `components`), as
    (kernel [6, 4], bias [4]). Read batch by batch from the model's own features (held in memory
    when training holds them: one parse of the split for both)."""
    widths = models.input_widths("query_product", transform_manifest["embedding_dim"], components)
    rows = datasets.VALIDATION_BATCH_ROWS
    pairs, labels = [], []
    for columns, label in datasets.split_dataset(transform_manifest, "train", widths, rows, training=False):
        pairs.append(representation.pair_features({name: c.numpy() for name, c in columns.items()}, components))
        labels.append(label.numpy())
    return models.fit_logistic_regression(np.vstack(pairs), np.concatenate(labels))


def class_weights(label_counts: dict, weighting: str) -> dict | None:
    """Keras class weights from the train split's label counts: none, or the inverse square root
    of each label's frequency, normalised to a mean of one over the rows."""
    if weighting == "none":
        return None
    counts = np.array([label_counts.get(features.LABELS_BY_ID[i], 0) for i in range(features.NUM_CLASSES)], dtype=float)
    weights = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    weights /= np.sum(weights * counts) / counts.sum()
    return {i: float(w) for i, w in enumerate(weights)}


def _fit(job: Training):
    """Fit with early stopping on validation loss (best weights restored). `keep_start_if_better`:
    if no epoch beats the starting weights on validation loss, keep the starting weights."""
    k = models.keras()
    model, transform_manifest, work_dir, cfg = job.model, job.transform_manifest, job.work_dir, job.cfg
    widths = models.model_widths(model)
    train = datasets.split_dataset(transform_manifest, "train", widths, job.batch_size, training=True, seed=cfg.seed)
    # Scoring the whole validation split gives the same loss and accuracy at any batch size:
    # large batches make it ~10x faster. A step budget (validation_steps) keeps batch_size.
    val_batch = job.batch_size if cfg.validation_steps else datasets.VALIDATION_BATCH_ROWS
    val = datasets.split_dataset(transform_manifest, "val", widths, val_batch, training=False)
    # a finite dataset run several steps an execution needs its length (Keras cannot infer it)
    val_rows = read_json(Path(transform_manifest["merged_dir"]) / "manifest.json")["splits"]["val"]["rows"]
    validation_steps = cfg.validation_steps or -(-val_rows // val_batch)
    (work_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    # the pair model's loss carries an L2 penalty: it judges epochs by its cross-entropy alone
    monitor = "val_crossentropy" if job.feature_set == "query_product" else "val_loss"
    callbacks = [
        k.callbacks.BackupAndRestore(str(work_dir / "backup")),
        k.callbacks.EarlyStopping(monitor=monitor, patience=cfg.patience, restore_best_weights=True),
        k.callbacks.ModelCheckpoint(str(work_dir / "checkpoints" / "epoch-{epoch:03d}"), save_weights_only=True),
    ]
    start_loss = None
    if job.keep_start_if_better:
        start_loss = model.evaluate(val, steps=validation_steps, verbose=0, return_dict=True)[monitor[4:]]
    start_weights = model.get_weights()
    history = model.fit(
        train,
        epochs=job.epochs,
        steps_per_epoch=job.steps_per_epoch,
        validation_data=val,
        validation_steps=validation_steps,
        callbacks=callbacks,
        class_weight=job.weights,
        verbose=2,
    )
    # epoch numbers, not positions: a run resumed by BackupAndRestore starts past epoch 1
    history = {**history.history, "epoch": [epoch + 1 for epoch in history.epoch]}
    history["best_epoch"] = history["epoch"][int(np.argmin(history[monitor]))]
    if start_loss is not None and start_loss <= min(history[monitor]):
        log.info("no epoch beat the starting weights on validation loss (%.4f): keeping them", start_loss)
        model.set_weights(start_weights)
        history["best_epoch"] = 0
    return history


def _emissions_tracker(output_dir: Path, cfg: config.RunConfig, project: str):
    from codecarbon import OfflineEmissionsTracker

    output_dir.mkdir(parents=True, exist_ok=True)
    return OfflineEmissionsTracker(
        country_iso_code=cfg.codecarbon_country,
        output_dir=str(output_dir),
        output_file="emissions.csv",
        project_name=project,
        log_level="error",
        save_to_file=True,
    )


def _log_pyfunc(mlflow, keras_model, transform_manifest: dict, work_dir: Path, feature_set: str, rule: Path | None):
    from mmsearch import serving
    from mmsearch.raw import parquet_file

    dim = transform_manifest["embedding_dim"]
    raw_columns = features.EMBEDDING_COLUMNS[feature_set]
    with atomic_dir(work_dir / "serving_model") as export_dir:
        serving.export_serving_model(keras_model, transform_manifest["transform_graph"], raw_columns, dim, export_dir)
    # two rows for the input example, from the validation split's first row group
    first_shard = sorted((Path(transform_manifest["merged_dir"]) / "val").glob("*.parquet"))[0]
    rows = parquet_file(first_shard).read_row_group(0, columns=list(raw_columns)).slice(0, 2)
    artifacts = {"saved_model": str(work_dir / "serving_model")}
    if rule is not None:
        artifacts[serving.DECISION_RULE] = str(rule)
    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT,
        python_model=serving.EsciRelevanceModel(),
        artifacts=artifacts,
        code_paths=[str(Path(__file__).parent)],
        pip_requirements=serving.pip_requirements(),
        input_example=serving.raw_frame(rows, raw_columns, np.float64),
        signature=serving.model_signature(raw_columns),
    )


@dataclass(frozen=True)
class Training:
    """One model to fit and log: its data, where it writes, how it trains."""

    model: object
    feature_set: str
    transform_manifest: dict
    work_dir: Path
    cfg: config.RunConfig
    params: dict  # logged beside the settings every run logs
    batch_size: int
    steps_per_epoch: int
    epochs: int
    weights: dict | None = None  # Keras class weights
    fit_rule: bool = False  # fit the macro-F1 decision rule on the validation split
    keep_start_if_better: bool = False  # if no epoch beats the starting weights, keep them


def query_training(transform_manifest: dict, work_dir: Path, cfg: config.RunConfig) -> Training:
    """The original design's model on the query embedding, with the run's settings."""
    model = models.build_query_model(transform_manifest["embedding_dim"], cfg.dropout, cfg.learning_rate)
    params = {"learning_rate": cfg.learning_rate, "dropout": cfg.dropout}
    return Training(
        model, "query", transform_manifest, work_dir, cfg, params, cfg.batch_size, cfg.steps_per_epoch, cfg.epochs
    )


def train_and_log(job: Training, mlflow) -> dict:
    """Fit one model inside the active MLflow run; log params, emissions, curves, the pyfunc, and
    the validation metrics it is selected by."""
    from mmsearch.metrics import apply_decision_rule, classification_metrics, fit_decision_rule, headline

    model, feature_set, transform_manifest, work_dir = job.model, job.feature_set, job.transform_manifest, job.work_dir
    width = sum(models.model_widths(model).values())
    params = {
        "batch_size": job.batch_size,
        "epochs": job.epochs,
        "input_dim": width,
        "optimizer": "Adam",
        "feature_set": feature_set,
        "steps_per_epoch": job.steps_per_epoch,
        "patience": job.cfg.patience,
    }
    mlflow.log_params(params | job.params)
    tracking.log_splits(mlflow, transform_manifest["merged_dir"], {"train": "training", "val": "validation"})
    tracker = _emissions_tracker(work_dir, job.cfg, f"mmsearch-{feature_set}")
    tracker.start()
    try:
        history = _fit(job)
    finally:
        emissions_kg = tracker.stop()
    measured = tracker.final_emissions_data
    energy = {
        "emissions_kg": float(emissions_kg or 0.0),
        "energy_kwh": float(measured.energy_consumed),
        "duration_s": float(measured.duration),
    }
    # the per-epoch curves, logged from Keras' history rather than by MLflow's autolog, whose
    # callback adds `validation_*` duplicates of `val_*` with other values (the last epoch's)
    for i, epoch in enumerate(history["epoch"]):
        mlflow.log_metrics({name: float(history[name][i]) for name in EPOCH_METRICS if name in history}, step=epoch)
    mlflow.log_metrics({f"codecarbon_{name}": value for name, value in energy.items()})
    mlflow.log_artifact(str(work_dir / "emissions.csv"))
    plot_training_curves(history, f"{feature_set}: loss and accuracy per epoch", work_dir / "training_curves.png")
    mlflow.log_artifact(str(work_dir / "training_curves.png"))

    weights_sha256 = models.weights_digest(model)
    mlflow.set_tag("weights_sha256", weights_sha256)
    labels, probabilities = datasets.predict_split(model, transform_manifest, "val")
    rule_path, predicted = None, None
    if job.fit_rule:
        rule = fit_decision_rule(labels, probabilities)
        rule_path = work_dir / "decision_rule.json"
        write_json(rule_path, rule)
        mlflow.log_dict(rule, "decision_rule.json")
        predicted = apply_decision_rule(probabilities, rule["class_weights"])
    query_ids = np.arange(len(labels))  # nDCG needs the query groups: validation selects on labels only
    validation = headline(classification_metrics(labels, probabilities, query_ids, predicted))
    validation.pop("ndcg")
    mlflow.log_metrics({f"selection/val_{name}": value for name, value in validation.items()})
    # the splits held in memory are read no more: logging the pyfunc loads the exported model
    # again, and the two together were the training process's peak
    datasets.release()
    info = _log_pyfunc(mlflow, model, transform_manifest, work_dir, feature_set, rule_path)
    best = history["epoch"].index(history["best_epoch"]) if history["best_epoch"] else None
    return {
        "feature_set": feature_set,
        "model_uri": info.model_uri,
        "weights_sha256": weights_sha256,
        "validation": validation,
        "validation_rows": len(labels),
        "parameters": int(model.count_params()),
        "components": job.params.get("components"),  # the pair model's whitened components
        "epochs_run": len(history["loss"]),
        "best_epoch": history["best_epoch"],
        "best_val_loss": float(history["val_loss"][best]) if best is not None else None,
        **energy,
    }


def hyperparameters(cfg: config.RunConfig, overrides: dict) -> models.Hyperparameters:
    return models.Hyperparameters.for_candidate(overrides, cfg.batch_size, cfg.learning_rate, cfg.dropout)


def pair_training(transform_manifest: dict, work_dir: Path, cfg: config.RunConfig, overrides: dict) -> Training:
    """A pair-model candidate: the run's settings with its overrides."""
    hp = hyperparameters(cfg, overrides)
    train_split = read_json(Path(transform_manifest["merged_dir"]) / "manifest.json")["splits"]["train"]
    # an epoch: one pass over the train split, or steps_per_epoch batches if that is less
    steps = max(1, min(cfg.steps_per_epoch, -(-train_split["rows"] // hp.batch_size)))
    epochs = min(hp.epochs, cfg.epochs) if hp.epochs else cfg.epochs
    weights = class_weights(train_split["labels"], hp.class_weighting)
    # class weights change the loss the regression minimised: the wide part then starts at zero
    start = wide_init(transform_manifest, hp.components) if weights is None else None
    dim = transform_manifest["embedding_dim"]
    model = models.build_pair_model(dim, hp, decay_steps=epochs * steps, wide_init=start)
    return Training(
        model=model,
        feature_set="query_product",
        transform_manifest=transform_manifest,
        work_dir=work_dir,
        cfg=cfg,
        params={**hp.as_dict(), "epochs": epochs},
        batch_size=hp.batch_size,
        steps_per_epoch=steps,
        epochs=epochs,
        weights=weights,
        fit_rule=cfg.decision_rule == "macro_f1",
        keep_start_if_better=start is not None,
    )
