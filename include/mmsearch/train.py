"""Keras on the transformed TFRecords, tracked in MLflow, measured by CodeCarbon.

`plan` opens the DAG run's parent MLflow run and lists the candidates (hyperparameter
overrides); `run` trains one candidate in its own nested MLflow run, fits the decision rule
on the validation split and logs the pyfunc (transform graph inside) with it. The DAG maps
`run` over the candidates; `select` keeps the best by validation macro-F1. The test split
is never read here. Checkpoints are written every epoch; Keras' BackupAndRestore lets a
retried task continue from the last finished epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsearch import config as C
from mmsearch import features as F
from mmsearch import model as M
from mmsearch.io import atomic_dir, read_json, write_json
from mmsearch.plots import plot_training_curves

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "crossentropy", "val_crossentropy")
VALIDATION_BATCH_ROWS = 2048
SHUFFLE_BUFFER = 10_000  # serialized examples (~9 KB each)
PARSE_THREADS = 2  # the machine's cores
PREFETCH_BATCHES = 2
# a split held in memory for training: the pair model's train split at 182k pairs is 59 MB
IN_MEMORY_BYTES = 256 * 2**20


def records(examples_dir: str):
    """The serialized tf.Examples of one transformed split (its directory in the manifest's `examples`)."""
    import tensorflow as tf

    return tf.data.TFRecordDataset(sorted(str(p) for p in Path(examples_dir).glob("transformed_examples-*")))


def _feature_spec(transform_graph: str, names) -> dict:
    import tensorflow_transform as tft

    spec = tft.TFTransformOutput(transform_graph).transformed_feature_spec()
    return {name: spec[name] for name in (*names, F.LABEL)}


def _as_columns(parsed: dict) -> tuple[dict, object]:
    """Parsed features as [n, width] (scalars become [n, 1]) and the labels."""
    import tensorflow as tf

    label = parsed.pop(F.LABEL)
    return {k: tf.expand_dims(v, -1) if v.shape.rank == 1 else v for k, v in parsed.items()}, label


def make_dataset(transform_manifest: dict, split: str, names, batch_size: int, training: bool, seed: int = 0):
    """Batches of (features, label) parsed from the transformed TFRecords, prefetched."""
    import tensorflow as tf

    spec = _feature_spec(transform_manifest["transform_graph"], names)
    dataset = records(transform_manifest["examples"][split])
    if training:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()

    def parse(serialized):  # a batch of examples: one parse call a batch, not one a row
        return _as_columns(tf.io.parse_example(serialized, spec))

    # Fixed, small buffers: AUTOTUNE's grow with free memory, and 2,048-row batches of 2,304
    # floats are 19 MB each (peak 1.50 GB at 182k pairs with AUTOTUNE)
    return dataset.batch(batch_size).map(parse, num_parallel_calls=PARSE_THREADS).prefetch(PREFETCH_BATCHES)


def read_split(transform_manifest: dict, split: str, names) -> tuple[dict, object]:
    """The named transformed features of one split as [n, width] tensors, and its labels. Parsed
    once a process and held as tensors only: training gathers its batches from them, validation
    and the regressions read them, and no second copy is made (at 182k pairs the query model's
    validation split is 83 MB a copy)."""
    return _parsed(transform_manifest["transform_graph"], transform_manifest["examples"][split], tuple(names))


@functools.lru_cache(maxsize=4)
def _parsed(transform_graph: str, examples_dir: str, names: tuple):
    import tensorflow as tf

    spec = _feature_spec(transform_graph, names)
    parts = [_as_columns(tf.io.parse_example(batch, spec)) for batch in records(examples_dir).batch(4096)]
    return {name: tf.concat([p[0][name] for p in parts], 0) for name in names}, tf.concat([p[1] for p in parts], 0)


def read_scalar_features(transform_manifest: dict, split: str, names) -> tuple[np.ndarray, np.ndarray]:
    """Scalar transformed features [n, len(names)] and the labels of one split, as numpy arrays."""
    features, labels = read_split(transform_manifest, split, names)
    return np.hstack([features[name].numpy() for name in names]), labels.numpy()


def _fits_in_memory(transform_manifest: dict, split: str, names) -> bool:
    spec = _feature_spec(transform_manifest["transform_graph"], names)
    row_bytes = sum(4 * max(1, int(np.prod(spec[name].shape))) for name in names)
    rows = read_json(Path(transform_manifest["merged_dir"]) / "manifest.json")["splits"][split]["rows"]
    return rows * row_bytes <= IN_MEMORY_BYTES


def split_dataset(transform_manifest: dict, split: str, names, batch_size: int, training: bool, seed: int = 0):
    """Batches of one split. A split whose features fit IN_MEMORY_BYTES is parsed once and its
    batches gathered from memory (an epoch then costs the model's arithmetic only; parsing every
    epoch was most of the pair model's training time); a larger one streams from the TFRecords."""
    import tensorflow as tf

    if not _fits_in_memory(transform_manifest, split, names):
        return make_dataset(transform_manifest, split, names, batch_size, training, seed)
    features, labels = read_split(transform_manifest, split, names)
    indices = tf.data.Dataset.range(len(labels))
    if training:
        indices = indices.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).repeat()

    def gather(batch):
        return tf.nest.map_structure(lambda tensor: tf.gather(tensor, batch), (features, labels))

    return indices.batch(batch_size).map(gather).prefetch(PREFETCH_BATCHES)


def wide_init(transform_manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """The wide part's starting weights: a logistic regression on the train split's z-scored pair
    features, as (kernel [6, 4], bias [4]). Read from the model's own features when training
    holds them in memory (one parse of the split for both)."""
    names = list(F.PAIR_FEATURES)
    model_names = F.model_features("query_product")
    if _fits_in_memory(transform_manifest, "train", model_names):
        names = model_names
    features, labels = read_split(transform_manifest, "train", names)
    return M.fit_logistic_regression(np.hstack([features[name].numpy() for name in F.PAIR_FEATURES]), labels.numpy())


def class_weights(label_counts: dict, weighting: str) -> dict | None:
    """Keras class weights from the train split's label counts: none, or the inverse square root
    of each label's frequency, normalised to a mean of one over the rows."""
    if weighting == "none":
        return None
    counts = np.array([label_counts.get(F.LABELS_BY_ID[i], 0) for i in range(F.NUM_CLASSES)], dtype=float)
    weights = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    weights /= np.sum(weights * counts) / counts.sum()
    return {i: float(w) for i, w in enumerate(weights)}


def _fit(job: Training):
    """Fit with early stopping on validation loss (best weights restored). `keep_start_if_better`:
    if no epoch beats the starting weights on validation loss, keep the starting weights."""
    k = M.keras()
    model, transform_manifest, work_dir, cfg = job.model, job.transform_manifest, job.work_dir, job.cfg
    names = F.model_features(job.feature_set)
    train = split_dataset(transform_manifest, "train", names, job.batch_size, training=True, seed=cfg.seed)
    # Scoring the whole validation split gives the same loss and accuracy at any batch size:
    # large batches make it ~10x faster. A step budget (validation_steps) keeps batch_size.
    val_batch = job.batch_size if cfg.validation_steps else VALIDATION_BATCH_ROWS
    val = split_dataset(transform_manifest, "val", names, val_batch, training=False)
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
        epochs=cfg.epochs,
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


def predict_split(model, transform_manifest: dict, split: str, feature_set: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a Keras model over one transformed split."""
    names = F.model_features(feature_set)
    labels, probabilities = [], []
    for features, label in split_dataset(transform_manifest, split, names, VALIDATION_BATCH_ROWS, training=False):
        probabilities.append(model(features, training=False).numpy())
        labels.append(label.numpy())
    return np.concatenate(labels), np.vstack(probabilities)


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


def _log_pyfunc(mlflow, keras_model, transform_manifest: dict, work_dir: Path, feature_set: str, rule: Path | None):
    from mmsearch import serving as S
    from mmsearch.raw import parquet_file

    dim = transform_manifest["embedding_dim"]
    raw_columns = F.EMBEDDING_COLUMNS[feature_set]
    with atomic_dir(work_dir / "serving_model") as export_dir:
        S.export_serving_model(keras_model, transform_manifest["transform_graph"], raw_columns, dim, export_dir)
    # two rows for the input example, from the validation split's first row group
    first_shard = sorted((Path(transform_manifest["merged_dir"]) / "val").glob("*.parquet"))[0]
    rows = parquet_file(first_shard).read_row_group(0, columns=list(raw_columns)).slice(0, 2)
    artifacts = {"saved_model": str(work_dir / "serving_model")}
    if rule is not None:
        artifacts[S.DECISION_RULE] = str(rule)
    logged = {"name": MODEL_ARTIFACT, "python_model": S.EsciRelevanceModel(), "artifacts": artifacts}
    logged |= {"code_paths": [str(Path(__file__).parent)], "pip_requirements": S.pip_requirements()}
    example = S.raw_frame(rows, raw_columns, np.float64)
    return mlflow.pyfunc.log_model(**logged, input_example=example, signature=S.model_signature(raw_columns))


@dataclass(frozen=True)
class Training:
    """One model to fit and log: its data, where it writes, how it trains."""

    model: object
    feature_set: str
    transform_manifest: dict
    work_dir: Path
    cfg: C.RunConfig
    params: dict  # logged beside the settings every run logs
    batch_size: int
    steps_per_epoch: int
    weights: dict | None = None  # Keras class weights
    fit_rule: bool = False  # fit the macro-F1 decision rule on the validation split
    keep_start_if_better: bool = False  # if no epoch beats the starting weights, keep them


def query_training(transform_manifest: dict, work_dir: Path, cfg: C.RunConfig) -> Training:
    """The original design's model on the query embedding, with the run's settings."""
    model = M.build_query_model(transform_manifest["embedding_dim"], cfg.dropout, cfg.learning_rate)
    params = {"learning_rate": cfg.learning_rate, "dropout": cfg.dropout}
    return Training(model, "query", transform_manifest, work_dir, cfg, params, cfg.batch_size, cfg.steps_per_epoch)


def train_and_log(job: Training, mlflow) -> dict:
    """Fit one model inside the active MLflow run; log params, emissions, curves, the pyfunc, and
    the validation metrics it is selected by."""
    from mmsearch.metrics import apply_decision_rule, classification_metrics, fit_decision_rule, headline

    model, feature_set, transform_manifest, work_dir = job.model, job.feature_set, job.transform_manifest, job.work_dir
    width = M.input_width(feature_set, transform_manifest["embedding_dim"])
    params = {"batch_size": job.batch_size, "epochs": job.cfg.epochs, "input_dim": width, "optimizer": "Adam"}
    params |= {"feature_set": feature_set, "steps_per_epoch": job.steps_per_epoch, "patience": job.cfg.patience}
    mlflow.log_params(params | job.params)
    tracker = _emissions_tracker(work_dir, job.cfg, f"mmsearch-{feature_set}")
    tracker.start()
    try:
        history = _fit(job)
    finally:
        emissions_kg = tracker.stop()
    data = tracker.final_emissions_data
    energy = {"emissions_kg": float(emissions_kg or 0.0), "energy_kwh": float(data.energy_consumed)}
    energy["duration_s"] = float(data.duration)
    # the per-epoch curves, logged from Keras' history rather than by MLflow's autolog, whose
    # callback adds `validation_*` duplicates of `val_*` with other values (the last epoch's)
    for i, epoch in enumerate(history["epoch"]):
        mlflow.log_metrics({name: float(history[name][i]) for name in EPOCH_METRICS if name in history}, step=epoch)
    mlflow.log_metrics({f"codecarbon_{name}": value for name, value in energy.items()})
    mlflow.log_artifact(str(work_dir / "emissions.csv"))
    plot_training_curves(history, f"{feature_set}: loss and accuracy per epoch", work_dir / "training_curves.png")
    mlflow.log_artifact(str(work_dir / "training_curves.png"))

    weights_sha256 = M.weights_digest(model)
    mlflow.set_tag("weights_sha256", weights_sha256)
    labels, probabilities = predict_split(model, transform_manifest, "val", feature_set)
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
    info = _log_pyfunc(mlflow, model, transform_manifest, work_dir, feature_set, rule_path)
    best = history["epoch"].index(history["best_epoch"]) if history["best_epoch"] else None
    trained = {"feature_set": feature_set, "model_uri": info.model_uri, "weights_sha256": weights_sha256}
    trained |= {"validation": validation, "validation_rows": len(labels), "parameters": int(model.count_params())}
    trained |= {"epochs_run": len(history["loss"]), "best_epoch": history["best_epoch"]}
    trained["best_val_loss"] = float(history["val_loss"][best]) if best is not None else None
    return trained | energy


def hyperparameters(cfg: C.RunConfig, overrides: dict) -> M.Hyperparameters:
    return M.Hyperparameters.for_candidate(overrides, cfg.batch_size, cfg.learning_rate, cfg.dropout)


def plan(cfg: C.RunConfig, tags: dict) -> list[dict]:
    """Open the parent MLflow run of this DAG run and list the candidates to train under it."""
    from mmsearch import tracking

    candidates = [dict(c) for c in cfg.candidates] or [{}]
    for overrides in candidates:
        hyperparameters(cfg, overrides)  # fail here, before any training, on a bad candidate
    if cfg.feature_set == "query":
        candidates = [{}]  # the original design has one model: nothing to choose
    mlflow = tracking.setup(cfg)
    tracking.end_abandoned_runs(mlflow, cfg, tags.get("run_id", ""))
    with mlflow.start_run(run_name=tags.get("run_id") or "cli", tags=tracking.airflow_tags(tags)) as parent:
        mlflow.log_params({"feature_set": cfg.feature_set, "candidates": len(candidates)})
        mlflow.log_dict({"candidates": candidates}, "candidates.json")
    return [
        {"index": i, "overrides": overrides, "parent_run_id": parent.info.run_id}
        for i, overrides in enumerate(candidates)
    ]


def run(transform_dir: Path, out_dir: Path, cfg: C.RunConfig, candidate: dict, tags: dict | None = None) -> dict:
    """Train one candidate in a nested MLflow run under the DAG run's parent run."""
    from mmsearch import tracking

    M.make_deterministic(cfg.seed)  # also settles tf.keras as Keras 2 before anything else touches it
    transform_manifest = read_json(Path(transform_dir) / "manifest.json")
    dim = transform_manifest["embedding_dim"]
    merged = read_json(Path(transform_manifest["merged_dir"]) / "manifest.json")
    name = f"candidate-{candidate['index']}"
    work_dir = Path(out_dir) / name
    log.info("training %s (%s) on %s", name, candidate["overrides"] or "defaults", transform_dir)
    mlflow = tracking.setup(cfg)
    tracking.end_abandoned_runs(mlflow, cfg, (tags or {}).get("run_id", ""), run_name=name)
    with mlflow.start_run(
        run_name=name,
        parent_run_id=candidate["parent_run_id"],
        nested=True,
        tags={**tracking.airflow_tags(tags or {}), "candidate": str(candidate["index"])},
    ) as child:
        if cfg.feature_set == "query":
            job = query_training(transform_manifest, work_dir, cfg)
        else:
            hp = hyperparameters(cfg, candidate["overrides"])
            # an epoch: one pass over the train split, or steps_per_epoch batches if that is less
            steps = max(1, min(cfg.steps_per_epoch, -(-merged["splits"]["train"]["rows"] // hp.batch_size)))
            weights = class_weights(merged["splits"]["train"]["labels"], hp.class_weighting)
            # class weights change the loss the regression minimised: the wide part then starts at zero
            start = wide_init(transform_manifest) if weights is None else None
            model = M.build_pair_model(dim, hp, decay_steps=cfg.epochs * steps, wide_init=start)
            options = {"weights": weights, "fit_rule": cfg.decision_rule == "macro_f1"}
            job = Training(
                model, "query_product", transform_manifest, work_dir, cfg, hp.as_dict(), hp.batch_size, steps
            )
            job = dataclasses.replace(job, **options, keep_start_if_better=start is not None)
        result = train_and_log(job, mlflow)
    result |= {"candidate": candidate["index"], "overrides": candidate["overrides"], "train_dir": str(work_dir)}
    result |= {"mlflow_run_id": child.info.run_id, "parent_run_id": candidate["parent_run_id"]}
    result["experiment"] = cfg.experiment_name
    write_json(work_dir / "train.json", result)
    found = (name, result["best_epoch"], result["epochs_run"], result["validation"])
    log.info("trained %s: best epoch %d of %d, validation %s", *found)
    return result
