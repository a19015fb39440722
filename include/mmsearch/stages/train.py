"""Train one candidate in its own nested MLflow run under the DAG run's parent run (opened by
`candidates`): Keras on the transformed TFRecords, measured by CodeCarbon, the decision rule
fitted on the validation split, the pyfunc (transform graph inside) logged with it. The DAG maps
this stage over the candidates; `select` keeps one. The test split is never read here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmsearch import config, models, tracking, training
from mmsearch.io import read_json, write_json

log = logging.getLogger(__name__)


# without a candidate (`mmsearch train` alone): the run's settings as they are, in an MLflow run of its own
AS_CONFIGURED = {"index": 0, "overrides": {}, "parent_run_id": None}


def run(
    transform_dir: Path, candidate: dict | None = None, *, out_dir: Path, cfg: config.RunConfig, tags: dict
) -> dict:
    """The candidate's training summary (train.json): validation metrics, model URI, MLflow run.
    `candidate`: one of those `candidates` listed (default: the run's settings as they are)."""
    candidate = candidate or AS_CONFIGURED
    models.make_deterministic(cfg.seed)  # also settles tf.keras as Keras 2 before anything else touches it
    transform_manifest = read_json(Path(transform_dir) / "manifest.json")
    name = f"candidate-{candidate['index']}"
    work_dir = Path(out_dir) / name
    log.info("training %s (%s) on %s", name, candidate["overrides"] or "defaults", transform_dir)
    mlflow = tracking.setup(cfg)
    tracking.end_abandoned_runs(mlflow, cfg, tags.get("run_id", ""), run_name=name)
    with mlflow.start_run(
        run_name=name,
        parent_run_id=candidate["parent_run_id"],
        nested=True,
        tags={**tracking.run_tags("train", tags), "candidate": str(candidate["index"])},
    ) as child:
        if cfg.feature_set == "query":
            job = training.query_training(transform_manifest, work_dir, cfg)
        else:
            job = training.pair_training(transform_manifest, work_dir, cfg, candidate["overrides"])
        trained = training.train_and_log(job, mlflow)
    result = {
        **trained,
        "candidate": candidate["index"],
        "overrides": candidate["overrides"],
        "train_dir": str(work_dir),
        "mlflow_run_id": child.info.run_id,
        "parent_run_id": candidate["parent_run_id"],
        "experiment": cfg.experiment_name,
    }
    write_json(work_dir / "train.json", result)
    log.info(
        "trained %s: best epoch %d of %d, validation %s",
        name,
        result["best_epoch"],
        result["epochs_run"],
        result["validation"],
    )
    return result
