"""Stage 5, train: Keras on the transformed TFRecords, tracked in MLflow, measured by CodeCarbon.

One MLflow run per DAG run. A `query_product` run also trains the original design's
`query` model on the same split, in a nested run, so evaluate can show what the
product features add. Checkpoints are written every epoch; Keras' BackupAndRestore
lets a retried task continue from the last finished epoch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mmsearch import config as C
from mmsearch import model as M
from mmsearch.io import atomic_dir, read_json, write_json
from mmsearch.plots import plot_training_curves

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
BASELINE_RUN_NAME = "query-baseline"


VALIDATION_BATCH_ROWS = 2048


def make_dataset(transform_manifest: dict, split: str, feature_set: str, batch_size: int, training: bool, seed: int = 0):
    """Batches of (features, label) parsed from the transformed TFRecords, prefetched."""
    import tensorflow as tf
    import tensorflow_transform as tft

    spec = tft.TFTransformOutput(transform_manifest["transform_graph"]).transformed_feature_spec()
    names = M.feature_names(feature_set)
    spec = {name: spec[name] for name in (*names, "label")}
    files = sorted(str(p) for p in Path(transform_manifest["examples"][split]).glob("transformed_examples-*"))
    dataset = tf.data.TFRecordDataset(files, compression_type=transform_manifest["compression"] or None)

    def parse(serialized):  # one example, or a batch of them
        rank = serialized.shape.rank
        parsed = (tf.io.parse_example if rank else tf.io.parse_single_example)(serialized, spec)
        label = parsed.pop("label")
        # scalar features (the cosines) become [1] for one example, [n, 1] for a batch
        return {k: tf.expand_dims(v, -1) if v.shape.rank == rank else v for k, v in parsed.items()}, label

    if not training:
        # the whole validation split every epoch: parse whole batches at once
        return dataset.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True).repeat()
    # Batch last: MLflow's autolog reads the batch size off the final BatchDataset (else it
    # logs batch_size=None and clashes with ours); tf.data injects the prefetch after it.
    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)


def setup_mlflow(cfg: C.RunConfig):
    import mlflow

    # Bound MLflow's own HTTP retries (its default waits minutes); callers retry on top.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

    default_store = not os.environ.get("MLFLOW_TRACKING_URI")  # read first: set_tracking_uri sets it
    mlflow.set_tracking_uri(C.mlflow_tracking_uri())
    if mlflow.get_experiment_by_name(cfg.experiment_name) is None:
        # the embedded default keeps artifacts under MMSEARCH_HOME, not in ./mlruns of the cwd
        mlflow.create_experiment(cfg.experiment_name, artifact_location=C.mlflow_artifact_root() if default_store else None)
    mlflow.set_experiment(cfg.experiment_name)
    return mlflow


def _fit(feature_set: str, transform_manifest: dict, work_dir: Path, cfg: C.RunConfig):
    import tensorflow as tf

    k = M.keras()
    tf.keras.utils.set_random_seed(cfg.seed)
    model = M.build_model(feature_set, transform_manifest["embedding_dim"], cfg.dropout, cfg.learning_rate)
    train = make_dataset(transform_manifest, "train", feature_set, cfg.batch_size, training=True, seed=cfg.seed)
    # Scoring the whole validation split gives the same loss and accuracy at any batch size:
    # large batches make it ~10x faster. A step budget (validation_steps) keeps batch_size.
    val_batch = cfg.batch_size if cfg.validation_steps else VALIDATION_BATCH_ROWS
    val = make_dataset(transform_manifest, "val", feature_set, val_batch, training=False)
    (work_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    callbacks = [
        k.callbacks.BackupAndRestore(str(work_dir / "backup")),
        k.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True),
        k.callbacks.ModelCheckpoint(str(work_dir / "checkpoints" / "epoch-{epoch:03d}"), save_weights_only=True),
    ]
    history = model.fit(
        train,
        epochs=cfg.epochs,
        steps_per_epoch=cfg.steps_per_epoch,
        validation_data=val,
        validation_steps=cfg.validation_steps or None,
        callbacks=callbacks,
        verbose=2,
    )
    # epoch numbers, not positions: a run resumed by BackupAndRestore starts past epoch 1
    return model, {**history.history, "epoch": [epoch + 1 for epoch in history.epoch]}


def _emissions_tracker(output_dir: Path, cfg: C.RunConfig, project: str):
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


def train_and_log(feature_set: str, transform_manifest: dict, work_dir: Path, cfg: C.RunConfig, mlflow) -> dict:
    """Fit one model inside the active MLflow run; log params, emissions and the pyfunc model."""
    from mmsearch.serving import EsciRelevanceModel, export_serving_model, model_signature, pip_requirements, raw_frame
    from mmsearch.raw import parquet_file

    dim = transform_manifest["embedding_dim"]
    raw_columns = C.EMBEDDING_COLUMNS[feature_set]
    mlflow.log_params({
        "batch_size": cfg.batch_size, "epochs": cfg.epochs, "input_dim": M.input_width(feature_set, dim),
        "optimizer": "Adam", "feature_set": feature_set, "steps_per_epoch": cfg.steps_per_epoch,
        "patience": cfg.patience, "learning_rate": cfg.learning_rate, "dropout": cfg.dropout,
    })
    tracker = _emissions_tracker(work_dir, cfg, f"mmsearch-{feature_set}")
    tracker.start()
    try:
        keras_model, history = _fit(feature_set, transform_manifest, work_dir, cfg)
    finally:
        emissions_kg = tracker.stop()
    data = tracker.final_emissions_data
    mlflow.log_metrics({
        "codecarbon_emissions_kg": float(emissions_kg or 0.0),
        "codecarbon_energy_kwh": float(data.energy_consumed),
        "codecarbon_duration_s": float(data.duration),
    })
    mlflow.log_artifact(str(work_dir / "emissions.csv"))
    plot_training_curves(history, f"{feature_set}: loss and accuracy per epoch", work_dir / "training_curves.png")
    mlflow.log_artifact(str(work_dir / "training_curves.png"))

    with atomic_dir(work_dir / "serving_model") as export_dir:
        export_serving_model(keras_model, transform_manifest["transform_graph"], raw_columns, dim, export_dir)
    # two rows for the input example, from the first row group only (not the whole test split)
    first_shard = sorted((Path(transform_manifest["merged_dir"]) / "test").glob("*.parquet"))[0]
    rows = parquet_file(first_shard).read_row_group(0, columns=list(raw_columns)).slice(0, 2)
    example = raw_frame(rows, raw_columns, np.float64)
    info = mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT,
        python_model=EsciRelevanceModel(),
        artifacts={"saved_model": str(work_dir / "serving_model")},
        code_paths=[str(Path(__file__).parent)],
        input_example=example,
        signature=model_signature(raw_columns),
        pip_requirements=pip_requirements(),
    )
    best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
    return {
        "feature_set": feature_set,
        "model_uri": info.model_uri,
        "epochs_run": len(history["loss"]),
        "best_epoch": history["epoch"][best],
        "best_val_loss": float(history["val_loss"][best]),
        "best_val_accuracy": float(history["val_accuracy"][best]),
        "emissions_kg": float(emissions_kg or 0.0),
        "energy_kwh": float(data.energy_consumed),
        "duration_s": float(data.duration),
    }


def _end_abandoned_runs(mlflow, cfg: C.RunConfig, lineage: dict) -> None:
    """A killed attempt leaves its MLflow run RUNNING: mark it KILLED before the retry starts."""
    if not lineage.get("run_id"):
        return
    stale = mlflow.search_runs(
        experiment_names=[cfg.experiment_name], output_format="list",
        filter_string=f"tags.`airflow.run_id` = '{lineage['run_id']}' and attributes.status = 'RUNNING'",
    )
    for run in stale:
        log.warning("marking MLflow run %s of an earlier, killed attempt as KILLED", run.info.run_id)
        mlflow.MlflowClient().set_terminated(run.info.run_id, status="KILLED")


def train(transform_dir: Path, out_dir: Path, cfg: C.RunConfig, lineage: dict | None = None) -> dict:
    M.keras()  # settle tf.keras as Keras 2 before MLflow's autolog touches it
    transform_manifest = read_json(Path(transform_dir) / "manifest.json")
    out_dir = Path(out_dir)
    mlflow = setup_mlflow(cfg)
    mlflow.tensorflow.autolog(log_models=False, log_datasets=False, silent=True)
    lineage = lineage or {}
    tags = {f"airflow.{k}": str(v) for k, v in lineage.items()}
    _end_abandoned_runs(mlflow, cfg, lineage)
    with mlflow.start_run(run_name=lineage.get("run_id", "cli"), tags=tags) as run:
        result = train_and_log(cfg.feature_set, transform_manifest, out_dir / cfg.feature_set, cfg, mlflow)
        result["mlflow_run_id"] = run.info.run_id
        if cfg.feature_set == "query_product" and cfg.train_query_baseline:
            with mlflow.start_run(run_name=BASELINE_RUN_NAME, nested=True, tags=tags) as child:
                baseline = train_and_log("query", transform_manifest, out_dir / "query", cfg, mlflow)
                baseline["mlflow_run_id"] = child.info.run_id
            result["query_baseline"] = baseline
    summary = {"train_dir": str(out_dir), "experiment": cfg.experiment_name, **result}
    write_json(out_dir / "train.json", summary)
    log.info("trained %s: best epoch %d, val_accuracy %.4f", cfg.feature_set, result["best_epoch"], result["best_val_accuracy"])
    return summary
