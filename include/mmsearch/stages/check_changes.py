"""Has anything changed since a registered version was trained?

A run whose fingerprint (mmsearch.fingerprint: data, code, model settings) a registered version
already carries (champion, challenger or an older loser: the same inputs make the same model)
skips everything after pull_data, unless `force_retrain` is set.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmsearch import config
from mmsearch.fingerprint import fingerprint, registered_with
from mmsearch.io import write_json

log = logging.getLogger(__name__)

RESULT = "changes.json"


def run(lineage: dict, *, out_dir: Path, cfg: config.RunConfig, tags: dict) -> dict:
    """{fingerprint, retrain, reason, version}: `retrain` false when a registered version has
    this fingerprint and `force_retrain` is off. `lineage`: pull's result."""
    found = fingerprint(lineage, cfg)
    matches = registered_with(cfg, found["fingerprint"])
    short = found["fingerprint"][:12]
    if not matches:
        result = {"retrain": True, "version": None, "reason": f"no registered version has fingerprint {short}"}
    else:
        version = matches[0]
        aliases = f" ({', '.join(sorted(version.aliases))})" if version.aliases else ""
        same = (
            f"{cfg.registered_model_name} v{version.version}{aliases}, registered by run "
            f"{version.tags.get('airflow_run_id', '?')}, was trained on the same data, code and settings "
            f"(fingerprint {short})"
        )
        why = "force_retrain" if cfg.force_retrain else "nothing changed"
        result = {"retrain": cfg.force_retrain, "version": str(version.version), "reason": f"{why}: {same}"}
    result["fingerprint"] = found["fingerprint"]
    log.warning("%s", result["reason"])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / RESULT, {**result, "inputs": found})
    return result
