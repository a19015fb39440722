"""The selected model, every baseline and the current champion, on the same held-out test query
groups, in one pass over the test split (the only stage that reads it).

The model and the champion are scored as the pyfuncs that serve (transform graph and decision
rule included). Metrics: accuracy, F1, per class, the confusion matrix, nDCG with the ESCI gains,
calibration; a paired bootstrap over the query groups gives every interval; figures go to MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mmsearch import config, features
from mmsearch.io import atomic_dir, read_json, write_json
from mmsearch.metrics import GAIN_BY_ID, bootstrap, classification_metrics, headline, intervals

log = logging.getLogger(__name__)

MODEL, CHAMPION = "model", "champion"
SCORES = "scores.json"  # what the DAG passes on to register


def _clip_scorer(fitted: dict):
    from mmsearch.clip_baseline import cosine_logistic_probabilities, cosines_of
    from mmsearch.serving import embedding_matrices

    columns = features.EMBEDDING_COLUMNS["query_product"]

    def score(table):
        cosines = cosines_of(embedding_matrices(table, columns))
        probabilities = cosine_logistic_probabilities(fitted, cosines)
        return probabilities, probabilities.argmax(axis=1), cosines.sum(axis=1)

    return score


def _champion_scorer(cfg: config.RunConfig, available: list[str]):
    """The current champion as a scorer, or the reason it cannot score this data."""
    from mmsearch import tracking

    version = tracking.champion(cfg)
    if version is None:
        return None, None, None
    try:
        scorer = tracking.PyfuncScorer(f"models:/{version.name}/{version.version}")
    except Exception as error:  # any failure to load means "cannot be scored"
        return version.version, None, f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    missing = [c for c in scorer.columns if c not in available]
    if missing:
        return version.version, None, f"this run's data has no column(s) {missing}"
    return version.version, scorer, None


def _scorers(model: dict, baselines: dict, cfg: config.RunConfig, available: list[str]) -> tuple[dict, dict]:
    from mmsearch import tracking

    scorers = {MODEL: tracking.PyfuncScorer(model["model_uri"])}
    if "clip_logistic" in baselines:
        scorers["baseline_clip"] = _clip_scorer(read_json(baselines["clip_logistic"]))
    if "query_model" in baselines:
        scorers["baseline_query"] = tracking.PyfuncScorer(baselines["query_model"]["model_uri"])
    version, champion, error = _champion_scorer(cfg, available)
    if champion is not None:
        scorers[CHAMPION] = champion
    return scorers, {"version": version, "error": error}


def score_test_split(merged_dir: Path, scorers: dict, batch_rows: int = 2048) -> dict:
    """Every scorer over the test split, read once in record batches (memory flat in its size)."""
    import pyarrow as pa

    from mmsearch.raw import parquet_file

    columns = list(features.EMBEDDING_COLUMNS[read_json(Path(merged_dir) / "manifest.json")["feature_set"]])
    parts: dict = {"labels": [], "query_ids": [], **{name: [] for name in scorers}}
    for path in sorted((Path(merged_dir) / "test").glob("*.parquet")):
        for batch in parquet_file(path).iter_batches(
            batch_size=batch_rows, columns=["query_id", features.LABEL, *columns]
        ):
            table = pa.Table.from_batches([batch])
            parts["labels"].append(batch.column(features.LABEL).to_numpy())
            parts["query_ids"].append(batch.column("query_id").to_numpy(zero_copy_only=False))
            for name, scorer in scorers.items():
                parts[name].append(scorer(table))
    scored = {"labels": np.concatenate(parts["labels"]), "query_ids": np.concatenate(parts["query_ids"])}
    for name in scorers:
        scored[name] = tuple(np.concatenate(piece) for piece in zip(*parts[name]))
    return scored


def _mlflow_metrics(results: dict) -> dict:
    """Metric names that mean one thing each: `test/<metric>` for the model (its headline, first
    in MLflow's charts), `test_<baseline>/<metric>` beside it, per-class under `test_per_class/`."""
    flat = {f"test/{k}": v for k, v in headline(results[MODEL]).items() if np.isfinite(v)}
    flat["test/ece"] = results[MODEL]["ece"]
    for label, values in results[MODEL]["per_class"].items():
        flat.update({f"test_per_class/{name}_{label}": values[name] for name in ("precision", "recall", "f1")})
    for name, metrics in results.items():
        if name != MODEL:
            flat.update({f"test_{name}/{k}": v for k, v in headline(metrics).items() if np.isfinite(v)})
    return flat


def _interval_metrics(uncertainty: dict) -> dict:
    """The model's headline metrics' 95 % bounds (`test/<metric>_ci_low`, `_ci_high`), and its
    difference from each baseline and the champion with the bounds of that difference."""
    flat = {}
    for metric, (low, high) in uncertainty["intervals"][MODEL].items():
        flat.update({f"test/{metric}_ci_low": low, f"test/{metric}_ci_high": high})
    for name, metrics in uncertainty["differences"].items():
        for metric, found in metrics.items():
            prefix = f"test_model_minus_{name}/{metric}"
            flat[prefix] = found["difference"]
            flat[f"{prefix}_ci_low"] = found["low"]
            flat[f"{prefix}_ci_high"] = found["high"]
    return {name: value for name, value in flat.items() if np.isfinite(value)}


def _figures(results: dict, scored: dict, out: Path, feature_set: str) -> None:
    from mmsearch.plots import plot_confusion_matrix, plot_precision_recall, plot_reliability

    for name, metrics in results.items():
        plot_confusion_matrix(metrics, f"{name} ({feature_set})", out / f"confusion_{name}.png")
    labels, probabilities = scored["labels"], scored[MODEL][0]
    reliability = f"model: reliability (ECE {results[MODEL]['ece']:.3f})"
    plot_reliability(labels, probabilities, reliability, out / "reliability_model.png")
    plot_precision_recall(
        labels, probabilities, "model: per-class precision-recall", out / "precision_recall_model.png"
    )


def _parent_note(mlflow, model: dict) -> str:
    """The DAG run's MLflow run description (its Overview in the UI): where the model's figures are."""
    experiment = mlflow.get_run(model["mlflow_run_id"]).info.experiment_id
    link = f"#/experiments/{experiment}/runs/{model['mlflow_run_id']}"
    return (
        f"The chosen model is [candidate-{model['candidate']}]({link}): its training curves, validation "
        "metrics, evaluation figures (confusion matrices, reliability, precision-recall under Artifacts → "
        "evaluation) and the logged model. This run holds the test metrics with their 95 % intervals."
    )


def run(model: dict, baselines: dict, merged_dir: Path, *, out_dir: Path, cfg: config.RunConfig, tags: dict) -> dict:
    """Score everything on the test split; log to the selected candidate's MLflow run. `model`:
    select's result (or one candidate's train.json); `baselines`: the baselines stage's."""
    import pyarrow.dataset

    from mmsearch import tracking

    mlflow = tracking.setup(cfg)
    available = pyarrow.dataset.dataset(Path(merged_dir) / "test").schema.names
    scorers, champion = _scorers(model, baselines, cfg, available)
    scored = score_test_split(merged_dir, scorers)
    labels, query_ids = scored["labels"], scored["query_ids"]
    results, served_and_ranked = {}, {}
    # always the train split's majority label: a constant score, every ranking a tie
    majority = np.full(len(labels), features.LABEL_IDS[baselines["majority_label"]])
    scored["baseline_majority"] = (np.eye(features.NUM_CLASSES)[majority],)
    for name in [*scorers, "baseline_majority"]:
        probabilities, *rest = scored[name]
        served = rest[0] if rest else probabilities.argmax(axis=1)
        ranking = rest[1] if len(rest) > 1 else probabilities @ GAIN_BY_ID
        results[name] = classification_metrics(labels, probabilities, query_ids, served, ranking)
        served_and_ranked[name] = (served, ranking)
    resampled = bootstrap(labels, query_ids, served_and_ranked, cfg.bootstrap_resamples, cfg.seed)
    uncertainty = intervals({name: headline(m) for name, m in results.items()}, resampled, reference=MODEL)
    feature_set = model["feature_set"]
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", {"test_rows": len(labels), "champion": champion, **results})
        write_json(tmp / "intervals.json", uncertainty)
        _figures(results, scored, tmp, feature_set)
    logged = {**_mlflow_metrics(results), **_interval_metrics(uncertainty)}
    with mlflow.start_run(run_id=model["mlflow_run_id"]):
        tracking.log_splits(mlflow, merged_dir, {"test": "testing"})
        mlflow.log_metrics(logged)
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluation")
    with mlflow.start_run(run_id=model["parent_run_id"]):  # the model's headline, on the DAG run's run too
        tracking.log_splits(mlflow, merged_dir, {"test": "testing"})
        mlflow.log_metrics({name: value for name, value in logged.items() if name.startswith("test/")})
        mlflow.set_tags(
            {
                "selected_candidate": str(model["candidate"]),
                "selected_run_id": model["mlflow_run_id"],
                "mlflow.note.content": _parent_note(mlflow, model),
            }
        )
    scores = {
        "evaluation_dir": str(out_dir),
        "test_rows": len(labels),
        "champion": champion,
        "metrics": {name: headline(metrics) for name, metrics in results.items()},
        "uncertainty": uncertainty,
    }
    write_json(Path(out_dir) / SCORES, scores)
    log.info("test metrics on %d rows: %s", len(labels), scores["metrics"])
    return scores
