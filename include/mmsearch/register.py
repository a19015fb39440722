"""The MLflow model registry, with aliases, lineage and a model card.

Every new version gets the alias `challenger`; the gate (`decide`) makes it `champion` on this
run's test split, with the bootstrap's intervals (docs/design.md, The model). The reason goes to
the version's tags, its description (a short model card), the task log and the run summary.
Re-running the same DAG run finds the version it already registered and reuses it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from mmsearch import champion as champions
from mmsearch import config as C
from mmsearch import tracking
from mmsearch.champion import CHALLENGER, CHAMPION
from mmsearch.io import CredentialsError, RegistryError, with_backoff, write_json
from mmsearch.summary import CARD_METRICS, SUMMARY, with_interval

log = logging.getLogger(__name__)

RUN_TAG = "airflow_run_id"
LOGICAL_DATE_TAG = "airflow_logical_date"
RUN_DIR_TAG = "run_dir"  # the run's outputs: retention keeps them, drift reads its merged data
MODEL_SUMMARY = ("candidate", "overrides", "epochs_run", "best_epoch", "validation", "weights_sha256")


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    champion_version: str | None = None


def _difference(metric: str, name: str, found: dict, label: str | None = None) -> str:
    """e.g. `macro_f1 +0.031 over baseline_clip (95 % CI +0.012 to +0.050)`."""
    return (
        f"{metric} {found['difference']:+.3f} over {label or name} "
        f"(95 % CI {found['low']:+.3f} to {found['high']:+.3f})"
    )


def decide(
    metric: str,
    scores: dict,
    differences: dict,
    champion_version: str | None = None,
    champion_error: str | None = None,
    min_improvement: float = 0.0,
) -> Decision:
    """The gate, on this run's test split, with the uncertainty of a few hundred queries:

    - never promoted when a baseline is significantly better (the difference's upper bound < 0);
    - with no champion, promoted when no baseline is;
    - over a champion, promoted only when the lower bound of the difference from it is above
      `min_improvement`; a champion that could not be scored keeps its alias.

    `scores`: test metrics by scorer; `differences`: scorer -> metric -> the model's difference
    from it (`difference`, `low`, `high`: the 95 % interval of a paired bootstrap)."""
    ours = scores["model"][metric]
    baselines = sorted(name for name in scores if name.startswith("baseline_"))
    worse = [name for name in baselines if differences[name][metric]["high"] < 0]
    if worse:
        losses = "; ".join(_difference(metric, name, differences[name][metric]) for name in worse)
        return Decision(False, f"{metric} {ours:.4f} is significantly below a baseline: {losses}", champion_version)
    best_baseline = min(baselines, key=lambda name: differences[name][metric]["difference"])
    against_baseline = _difference(metric, best_baseline, differences[best_baseline][metric])
    if champion_version is None:
        return Decision(
            True, f"no champion yet; {metric} {ours:.4f}, {against_baseline}, no baseline significantly better"
        )
    if champion_error is not None:
        unscored = f"champion v{champion_version} could not be scored on this data: {champion_error}"
        return Decision(False, unscored, champion_version)
    found = differences["champion"][metric]
    promote = found["low"] > min_improvement
    verdict = "above" if promote else "not above"
    over = _difference(metric, "champion", found, f"champion v{champion_version}")
    reason = f"{over}: lower bound {verdict} min_improvement {min_improvement:g}; {against_baseline}"
    return Decision(promote, reason, champion_version)


def lineage_tags(lineage: dict, tags: dict, model: dict, metrics: dict, cfg: C.RunConfig, run_dir: str) -> dict:
    """What the version came from: data (md5 and source URL of each file), code, settings, run."""
    from mmsearch import check_changes as changes

    found = {
        "git_commit": changes.git_commit(),
        RUN_DIR_TAG: str(run_dir),
        "airflow_dag_id": tags.get("dag_id", ""),
        RUN_TAG: tags.get("run_id", ""),
        LOGICAL_DATE_TAG: tags.get("logical_date") or "",
        "feature_set": model["feature_set"],
        "candidate": str(model.get("candidate", "")),
        "weights_sha256": model.get("weights_sha256", ""),
        "dvc_md5.raw": lineage.get("dvc_md5", ""),
    }
    if lineage.get("file_md5"):  # without the data's lineage (a CLI call without --lineage) no fingerprint
        found[changes.TAG] = changes.fingerprint(lineage, cfg)["fingerprint"]
    for path, md5 in lineage.get("file_md5", {}).items():
        found[f"dvc_md5.{path}"] = md5
    for path, url in lineage.get("sources", {}).items():
        found[f"source.{path}"] = C.redact_uri(url)
    for key, value in metrics.items():
        found[f"test_{key}"] = f"{value:.6f}"
    return found


def model_card(
    model: dict,
    scores: dict,
    lineage: dict,
    decision: Decision,
    metric: str,
    intervals: dict | None = None,
    awaiting_approval: bool = False,
) -> str:
    """The registered version's description: what it is, its data, its scores beside the baselines."""
    intervals = intervals or {}
    cells = {
        name: [with_interval(m[key], intervals.get(name, {}).get(key)) for key in CARD_METRICS]
        for name, m in scores.items()
    }
    rows = "\n".join(f"| {name} | {' | '.join(found)} |" for name, found in cells.items())
    data = "\n".join(f"- `{path}`: md5 `{md5}`" for path, md5 in sorted(lineage.get("file_md5", {}).items()))
    overrides = model.get("overrides") or {}
    verdict = "promoted to champion" if decision.promote else "stays challenger"
    if awaiting_approval:
        verdict = "granted; the promotion awaits a person's approval (Airflow: model.approve_promotion)"
    return (
        f"**ESCI relevance model** ({model['feature_set']}), candidate {model.get('candidate', 0)} "
        f"`{overrides}`, chosen by validation macro-F1 {model['validation']['macro_f1']:.4f}; "
        f"best epoch {model['best_epoch']} of {model['epochs_run']}.\n\n"
        f"**Test split** (query groups never seen in training or selection; [95 % interval], a "
        f"bootstrap over its queries):\n\n"
        f"| scorer | accuracy | macro-F1 | nDCG |\n| --- | --- | --- | --- |\n{rows}\n\n"
        f"**Gate** ({metric}): {verdict}: {decision.reason}.\n\n"
        f"**Data**: DVC `{lineage.get('dvc_md5', '')}`\n{data}\n"
    )


def _existing_version(client, name: str, tags: dict):
    """The version this DAG run registered already: the same run_id (a cleared task), or the same
    DAG and logical date (`airflow dags test` again for that date, which makes a new run_id)."""
    if tags.get("logical_date"):
        query = (
            f"tags.airflow_dag_id = '{tags.get('dag_id', '')}' and tags.{LOGICAL_DATE_TAG} = '{tags['logical_date']}'"
        )
    elif tags.get("run_id"):
        query = f"tags.{RUN_TAG} = '{tags['run_id']}'"
    else:
        return None
    found = client.search_model_versions(f"name = '{name}' and {query}")
    return max(found, key=lambda v: int(v.version)) if found else None


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
    lineage: dict,
    out_dir: Path,
    cfg: C.RunConfig,
    tags: dict | None = None,
    wait_seconds: float = 5.0,
) -> dict:
    """Register with retries and exponential backoff while MLflow is unreachable; write the run's
    summary into `out_dir`. Every step is safe to repeat (the version is found again by its run
    tag), and the champion alias moves last."""
    import tenacity

    tags = tags or {}
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
            f"MLflow tracking server {C.redact_uri(C.mlflow_tracking_uri())} unreachable after "
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


def _register_once(model: dict, scores: dict, lineage: dict, cfg: C.RunConfig, tags: dict, run_dir: Path) -> dict:
    from mlflow import MlflowClient

    mlflow = tracking.setup(cfg)
    client = MlflowClient()
    name, metric = cfg.registered_model_name, cfg.promotion_metric
    metrics = scores["metrics"]
    version = _existing_version(client, name, tags)
    if version is not None:
        log.info("this DAG run (%s) already registered %s v%s: reusing it", tags.get("run_id"), name, version.version)
    else:
        version = mlflow.register_model(
            model["model_uri"], name, tags=lineage_tags(lineage, tags, model, metrics["model"], cfg, run_dir)
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
