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

from mmsearch import config, datasets, features, models, tracking, training
from mmsearch.clip_baseline import CLIP_COSINES, fit_cosine_logistic
from mmsearch.io import read_json, write_json

log = logging.getLogger(__name__)


def run(
    transform_dir: Path, parent_run_id: str | None = None, *, out_dir: Path, cfg: config.RunConfig, tags: dict
) -> dict:
    """Fit the CLIP baseline and train the query model; return what evaluate scores them with.
    `parent_run_id`: the DAG run's MLflow run (from `candidates`), the query model's parent (default:
    a run of its own)."""
    models.make_deterministic(cfg.seed)
    transform_manifest = read_json(Path(transform_dir) / "manifest.json")
    merged = read_json(Path(transform_manifest["merged_dir"]) / "manifest.json")
    train_counts = merged["splits"]["train"]["labels"]
    result: dict = {"majority_label": max(train_counts, key=train_counts.get)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if cfg.feature_set == "query_product":
        names = [features.raw_cosine(name) for name in CLIP_COSINES]
        cosines, labels = datasets.read_scalar_features(transform_manifest, "train", names)
        write_json(Path(out_dir) / "clip_logistic.json", fit_cosine_logistic(cosines, labels))
        result["clip_logistic"] = str(Path(out_dir) / "clip_logistic.json")
        log.info("fitted the CLIP baseline's logistic regression on %d train rows", len(labels))
    if cfg.feature_set == "query_product" and cfg.train_query_baseline:
        mlflow = tracking.setup(cfg)
        tracking.end_abandoned_runs(mlflow, cfg, tags.get("run_id", ""), run_name="baseline-query")
        with mlflow.start_run(
            run_name="baseline-query",
            parent_run_id=parent_run_id,
            nested=True,
            tags={**tracking.run_tags("baselines", tags), "baseline": "query"},
        ) as child:
            job = training.query_training(transform_manifest, Path(out_dir) / "query", cfg)
            trained = training.train_and_log(job, mlflow)
        result["query_model"] = {**trained, "mlflow_run_id": child.info.run_id}
    write_json(Path(out_dir) / "baselines.json", result)
    return result
