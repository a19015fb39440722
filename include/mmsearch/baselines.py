"""What the pair model must beat, fitted on the train split only.

- majority: the train split's most frequent label (evaluate reads it from merge's counts);
- clip: training-free ranking by the query-product CLIP cosines, its labels from a logistic
  regression on those two cosines (scikit-learn, fitted on train);
- query: the original design's model on the query embedding alone, in a nested MLflow run.

Evaluate scores all of them on the same test rows as the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mmsearch import config as C
from mmsearch import features as F
from mmsearch.io import read_json, write_json

log = logging.getLogger(__name__)

# The two query-product cosines the CLIP baseline uses (raw, as cosine ranking sees them).
CLIP_COSINES = (F.COS_QUERY_TEXT, F.COS_QUERY_IMAGE)


def cosines_of(frame_columns: dict) -> np.ndarray:
    """The same two cosines from raw embedding matrices (evaluate's side), [n, 2]."""

    def unit(matrix):
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    query = unit(frame_columns[F.QUERY_EMBEDDING])
    return np.column_stack([np.sum(query * unit(frame_columns[F.COSINES[name][1]]), axis=1) for name in CLIP_COSINES])


def fit_cosine_logistic(cosines: np.ndarray, labels: np.ndarray) -> dict:
    from mmsearch.model import fit_logistic_regression

    kernel, bias = fit_logistic_regression(cosines, labels)
    return {"features": list(CLIP_COSINES), "kernel": kernel.tolist(), "bias": bias.tolist()}


def cosine_logistic_probabilities(fitted: dict, cosines: np.ndarray) -> np.ndarray:
    """[n, 4] in label-id order; a label absent from train gets probability ~0."""
    from mmsearch.model import softmax_probabilities

    return softmax_probabilities(cosines, fitted["kernel"], fitted["bias"])


def run(transform_dir: Path, out_dir: Path, cfg: C.RunConfig, parent_run_id: str, tags: dict | None = None) -> dict:
    """Fit the CLIP baseline and train the query model; return what evaluate scores them with."""
    from mmsearch import model as M
    from mmsearch import tracking
    from mmsearch.train import query_training, read_scalar_features, train_and_log

    M.make_deterministic(cfg.seed)
    transform_manifest = read_json(Path(transform_dir) / "manifest.json")
    merged = read_json(Path(transform_manifest["merged_dir"]) / "manifest.json")
    train_counts = merged["splits"]["train"]["labels"]
    result: dict = {"majority_label": max(train_counts, key=train_counts.get)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if cfg.feature_set == "query_product":
        cosines, labels = read_scalar_features(transform_manifest, "train", [F.raw_cosine(n) for n in CLIP_COSINES])
        write_json(Path(out_dir) / "clip_logistic.json", fit_cosine_logistic(cosines, labels))
        result["clip_logistic"] = str(Path(out_dir) / "clip_logistic.json")
        log.info("fitted the CLIP baseline's logistic regression on %d train rows", len(labels))
    if cfg.feature_set == "query_product" and cfg.train_query_baseline:
        mlflow = tracking.setup(cfg)
        tracking.end_abandoned_runs(mlflow, cfg, (tags or {}).get("run_id", ""), run_name="baseline-query")
        run_tags = {**tracking.airflow_tags(tags or {}), "baseline": "query"}
        nested = {"parent_run_id": parent_run_id, "nested": True, "tags": run_tags}
        with mlflow.start_run(run_name="baseline-query", **nested) as child:
            trained = train_and_log(query_training(transform_manifest, Path(out_dir) / "query", cfg), mlflow)
        result["query_model"] = {**trained, "mlflow_run_id": child.info.run_id}
    write_json(Path(out_dir) / "baselines.json", result)
    return result
