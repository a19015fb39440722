"""Stage 6, evaluate: the logged model on the held-out test query groups, beside baselines.

The model is loaded back from MLflow as the pyfunc that will be registered and fed raw
test rows, so the numbers are those of the served model (transform graph included).
Metrics: accuracy, micro/macro F1, per-class precision/recall/F1, the confusion matrix,
and mean nDCG over queries with the ESCI gains, products ranked by expected gain.
Baselines on the same rows: the train split's majority label, and in a `query_product`
run the `query` model (the original design's) trained in the same run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mmsearch import config as C
from mmsearch.io import atomic_dir, read_json, write_json
from mmsearch.plots import plot_confusion_matrix

log = logging.getLogger(__name__)

LABEL_ORDER = list(range(C.NUM_CLASSES))  # I, C, S, E
GAIN_BY_ID = np.array([C.ESCI_GAINS[C.LABELS_BY_ID[i]] for i in LABEL_ORDER])
HEADLINE = ("accuracy", "micro_f1", "macro_f1", "ndcg")


def mean_ndcg(query_ids: np.ndarray, true_gain: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """Mean nDCG over queries (scikit-learn's ndcg_score per query), and how many queries counted.

    Queries with one judged product, or with no product of positive gain, carry no
    ranking information and are left out.
    """
    from sklearn.metrics import ndcg_score

    order = np.argsort(query_ids, kind="stable")
    sorted_ids = query_ids[order]
    bounds = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1], True])
    values = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        rows = order[start:stop]
        if len(rows) < 2 or true_gain[rows].max() <= 0:
            continue
        values.append(ndcg_score(true_gain[rows][None, :], scores[rows][None, :]))
    return (float(np.mean(values)) if values else float("nan")), len(values)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, query_ids: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=LABEL_ORDER, zero_division=0
    )
    ndcg, ndcg_queries = mean_ndcg(query_ids, GAIN_BY_ID[labels], probabilities @ GAIN_BY_ID)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "micro_f1": float(f1_score(labels, predicted, average="micro", labels=LABEL_ORDER, zero_division=0)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", labels=LABEL_ORDER, zero_division=0)),
        "ndcg": ndcg,
        "ndcg_queries": ndcg_queries,
        "per_class": {
            C.LABELS_BY_ID[i]: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                "support": int(support[i])}
            for i in LABEL_ORDER
        },
        "confusion_matrix": {
            "labels": [C.LABELS_BY_ID[i] for i in LABEL_ORDER],
            "matrix": confusion_matrix(labels, predicted, labels=LABEL_ORDER).tolist(),
        },
    }


def majority_probabilities(train_label_counts: dict, rows: int) -> np.ndarray:
    """Always the train split's majority label (a constant score: every ranking is a tie)."""
    majority = max(train_label_counts, key=train_label_counts.get)
    probabilities = np.zeros((rows, C.NUM_CLASSES))
    probabilities[:, C.LABEL_IDS[majority]] = 1.0
    return probabilities


def score_model(model_uri: str, merged_dir: Path, columns, batch_rows: int = 2048):
    """Labels, query ids and probabilities [n, 4] (label-id order) of an MLflow pyfunc over the
    raw test split, read in record batches so memory does not grow with the split."""
    import mlflow
    import pyarrow as pa

    from mmsearch.raw import parquet_file
    from mmsearch.serving import probabilities_of, raw_frame

    model = mlflow.pyfunc.load_model(model_uri)
    labels, query_ids, probabilities = [], [], []
    for path in sorted((Path(merged_dir) / "test").glob("*.parquet")):
        for batch in parquet_file(path).iter_batches(batch_size=batch_rows, columns=["query_id", "label", *columns]):
            table = pa.Table.from_batches([batch])
            probabilities.append(probabilities_of(model.predict(raw_frame(table, columns))))
            labels.append(batch.column("label").to_numpy())
            query_ids.append(batch.column("query_id").to_numpy(zero_copy_only=False))
    return np.concatenate(labels), np.concatenate(query_ids), np.vstack(probabilities)


def _flat(prefix: str, metrics: dict) -> dict:
    flat = {f"{prefix}{k}": metrics[k] for k in HEADLINE if np.isfinite(metrics[k])}
    for label, values in metrics["per_class"].items():
        flat.update({f"{prefix}{name}_{label}": values[name] for name in ("precision", "recall", "f1")})
    return flat


def evaluate(merged_dir: Path, train_summary: dict, out_dir: Path, cfg: C.RunConfig) -> dict:
    from mmsearch.train import setup_mlflow

    mlflow = setup_mlflow(cfg)
    merged = read_json(Path(merged_dir) / "manifest.json")
    columns = C.EMBEDDING_COLUMNS[train_summary["feature_set"]]
    labels, query_ids, probabilities = score_model(train_summary["model_uri"], merged_dir, columns)
    results = {"model": classification_metrics(labels, probabilities, query_ids)}
    majority = majority_probabilities(merged["splits"]["train"]["labels"], len(labels))
    results["baseline_majority"] = classification_metrics(labels, majority, query_ids)
    if "query_baseline" in train_summary:
        _, _, probabilities = score_model(train_summary["query_baseline"]["model_uri"], merged_dir,
                                          C.EMBEDDING_COLUMNS["query"])
        results["baseline_query"] = classification_metrics(labels, probabilities, query_ids)

    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", {"test_rows": len(labels), **results})
        for name, metrics in results.items():
            plot_confusion_matrix(metrics, f"{name} ({train_summary['feature_set']})", tmp / f"confusion_{name}.png")
    with mlflow.start_run(run_id=train_summary["mlflow_run_id"]):
        for name, metrics in results.items():
            mlflow.log_metrics(_flat("test_" if name == "model" else f"{name}_test_", metrics))
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluation")
    short = {name: {k: metrics[k] for k in HEADLINE} for name, metrics in results.items()}
    log.info("test metrics: %s", short)
    return {"evaluation_dir": str(out_dir), "test_rows": len(labels), "metrics": short}
