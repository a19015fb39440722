"""Register the selected model in the MLflow model registry, with aliases, lineage and a model card.

Every new version gets the alias `challenger`; the gate (mmsearch.gate) makes it `champion` on
this run's test split, with the bootstrap's intervals (docs/design.md, The model). The reason goes
to the version's tags, its description (the model card), the task log and the run's summary.
Re-running the same DAG run finds the version it already registered and reuses it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from mmsearch import champion as champions
from mmsearch import config, paths, tracking
from mmsearch.champion import CHALLENGER, CHAMPION
from mmsearch.gate import Decision, decide
from mmsearch.io import CredentialsError, RegistryError, with_backoff, write_json
from mmsearch.lineage import RUN_DIR_TAG, existing_version, lineage_tags
from mmsearch.summary import SUMMARY, model_card

log = logging.getLogger(__name__)

MODEL_SUMMARY = ("candidate", "overrides", "components", "epochs_run", "best_epoch", "validation", "weights_sha256")


def _unreachable(error: BaseException) -> bool:
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, requests.exceptions.RequestException | ConnectionError):
        return True
    text = str(error)
    if tracking.credentials_refused(error):
        return False  # retrying will not mend a password
    return isinstance(error, MlflowException) and ("API request to" in text or "Max retries exceeded" in text)


def run(
    model: dict,
    scores: dict,
    lineage: dict | None = None,
    *,
    out_dir: Path,
    cfg: config.RunConfig,
    tags: dict,
    wait_seconds: float = 5.0,
) -> dict:
    """Register with retries and exponential backoff while MLflow is unreachable; the run's summary
    (its `registry` part is what the DAG passes on). `model`: select's result; `scores`: evaluate's;
    `lineage`: pull's (without it, no data lineage or fingerprint is tagged). `out_dir` is the run's
    own directory: the summary is the run's, not a stage's. Every step is safe to repeat (the
    version is found again by its run tag), and the champion alias moves last."""
    import tenacity

    lineage = lineage or {}
    unreachable = tenacity.retry_if_exception(_unreachable)
    retrying = with_backoff(cfg.registry_attempts, wait_seconds, 120, unreachable, "MLflow unreachable")
    try:
        registry = retrying(_register_once, model, scores, lineage, cfg, tags, out_dir)
    except Exception as error:
        if tracking.credentials_refused(error):
            raise CredentialsError(f"{tracking.refusal_line(error)}; nothing was registered or promoted") from None
        if not _unreachable(error):
            raise
        raise RegistryError(
            f"MLflow tracking server {paths.redact_uri(paths.mlflow_tracking_uri())} unreachable after "
            f"{cfg.registry_attempts} attempts; nothing was promoted: {str(error).splitlines()[0][:300]}"
        ) from None
    summary = {
        "run_id": tags.get("run_id", ""),
        "run_dir": str(out_dir),
        "registry": registry,
        "metrics": scores["metrics"],
        "intervals": scores["uncertainty"]["intervals"],
        "test_rows": scores["test_rows"],
        "model": {k: model.get(k) for k in MODEL_SUMMARY},
        "candidates": model.get("selection", {}).get("candidates", []),
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / SUMMARY, summary)
    return summary


def _register_once(model: dict, scores: dict, lineage: dict, cfg: config.RunConfig, tags: dict, out_dir: Path) -> dict:
    from mlflow import MlflowClient

    mlflow = tracking.setup(cfg)
    client = MlflowClient()
    name, metric = cfg.registered_model_name, cfg.promotion_metric
    metrics = scores["metrics"]
    version = existing_version(client, name, tags)
    if version is not None:
        log.info("this DAG run (%s) already registered %s v%s: reusing it", tags.get("run_id"), name, version.version)
    else:
        version = mlflow.register_model(
            model["model_uri"], name, tags=lineage_tags(lineage, tags, model, metrics["model"], cfg, out_dir)
        )
    client.set_registered_model_alias(name, CHALLENGER, version.version)

    champion = tracking.champion(cfg)
    if champion is not None and champion.version == version.version:
        decision = Decision(False, f"v{version.version} is already the champion")
    elif champion is not None and str(champion.version) != str(scores["champion"]["version"]):
        moved = f"the champion changed to v{champion.version} after evaluate scored v{scores['champion']['version']}"
        decision = Decision(False, moved, champion.version)
    else:
        champion_scored = (scores["champion"]["version"], scores["champion"]["error"], cfg.min_improvement)
        decision = decide(metric, metrics, scores["uncertainty"]["differences"], *champion_scored)
    awaiting = decision.promote and cfg.promotion == "approve"
    if decision.promote and not awaiting:
        gate = f"the gate of {tags.get('dag_id') or 'mmsearch register'}"
        champions.move(client, name, version.version, "gate", gate, decision.reason, tags.get("run_id", ""))
    client.set_model_version_tag(name, version.version, "promotion_decision", decision.reason)
    if awaiting:
        client.set_model_version_tag(name, version.version, "approval.status", "awaiting")
    card = model_card(model, metrics, lineage, decision, metric, scores["uncertainty"]["intervals"], awaiting)
    client.update_model_version(name, version.version, card)
    registered = {"registered_model": name, "registered_version": version.version}
    with mlflow.start_run(run_id=model["mlflow_run_id"]):
        mlflow.set_tags(registered | {"promotion_decision": decision.reason})
    aliases = sorted(client.get_model_version(name, version.version).aliases)
    log.info("registered %s v%s, aliases %s: %s", name, version.version, aliases, decision.reason)
    holders = [champions.holder(client, name, alias) for alias in (CHAMPION, CHALLENGER)]
    return {
        "registered_model": name,
        "version": version.version,
        "aliases": aliases,
        "promotion_metric": metric,
        "decision": asdict(decision),
        "promoted": decision.promote and not awaiting,
        "approval": {"status": "awaiting", "timeout_hours": cfg.approval_timeout_hours} if awaiting else None,
        "champion_version": str(holders[0].version) if holders[0] else None,
        # the runs whose outputs retention keeps (drift and ranking read the champion's data)
        "lineage_run_dirs": sorted({v.tags[RUN_DIR_TAG] for v in holders if v and v.tags.get(RUN_DIR_TAG)}),
    }
