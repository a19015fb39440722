"""The candidates of a training run: opens the DAG run's parent MLflow run and lists the
hyperparameter overrides to train under it (the DAG maps `train` over them)."""

from __future__ import annotations

from pathlib import Path

from mmsearch import config, tracking, training
from mmsearch.io import write_json


def run(*, out_dir: Path, cfg: config.RunConfig, tags: dict) -> list[dict]:
    """[{index, overrides, parent_run_id}], also written to candidates.json. A bad candidate fails
    here, before any training."""
    candidates = [dict(c) for c in cfg.candidates] or [{}]
    for overrides in candidates:
        training.hyperparameters(cfg, overrides)
    if cfg.feature_set == "query":
        candidates = [{}]  # the original design has one model: nothing to choose
    mlflow = tracking.setup(cfg)
    tracking.end_abandoned_runs(mlflow, cfg, tags.get("run_id", ""))
    with mlflow.start_run(run_name=tags.get("run_id") or "cli", tags=tracking.run_tags("candidates", tags)) as parent:
        mlflow.log_params({"feature_set": cfg.feature_set, "candidates": len(candidates)})
        mlflow.log_dict({"candidates": candidates}, "candidates.json")
    planned = [
        {"index": i, "overrides": overrides, "parent_run_id": parent.info.run_id}
        for i, overrides in enumerate(candidates)
    ]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / "candidates.json", {"candidates": planned})
    return planned
