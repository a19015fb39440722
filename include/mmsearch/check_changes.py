"""Has anything changed since a registered version was trained?

A run's fingerprint is the md5 of every raw file, the code's git commit (and its uncommitted
changes, if any) and every setting that can change the model. `register` tags each version with
it; a run whose fingerprint a registered version already carries (champion, challenger or an
older loser: the same inputs make the same model) skips everything after pull_data, unless
`force_retrain` is set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path

from mmsearch import config as C
from mmsearch.io import write_json

log = logging.getLogger(__name__)

TAG = "fingerprint"
RESULT = "changes.json"
# What the code of a run is: the package, the DAGs and the locked environments.
CODE_PATHS = ("include", "dags", "plugins", "pyproject.toml", "requirements.txt", "requirements-ml.txt")


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=C.REPO_ROOT, capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else ""


def git_commit() -> str:
    return _git("rev-parse", "HEAD").strip() or "unknown"


def code_version() -> str:
    """The git commit, and a hash of the uncommitted changes to the code when there are any."""
    commit = git_commit()
    diff = _git("diff", "HEAD", "--", *CODE_PATHS)
    return f"{commit}+{hashlib.sha256(diff.encode()).hexdigest()[:12]}" if diff else commit


def fingerprint(lineage: dict, cfg: C.RunConfig) -> dict:
    """The run's inputs and their hash: data (file md5s), code, the model's settings."""
    parts = {"data": dict(sorted(lineage["file_md5"].items())), "code": code_version(), "config": cfg.model_settings()}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": digest, **parts}


def registered_with(cfg: C.RunConfig, digest: str) -> list:
    """The registered versions carrying this fingerprint, newest first."""
    from mlflow import MlflowClient

    from mmsearch import tracking

    tracking.setup(cfg)
    client = MlflowClient()
    found = client.search_model_versions(f"name = '{cfg.registered_model_name}' and tags.{TAG} = '{digest}'")
    # a search result may leave the aliases out: read each version whole
    return [client.get_model_version(v.name, v.version) for v in sorted(found, key=lambda v: -int(v.version))]


def run(lineage: dict, out_dir: Path, cfg: C.RunConfig) -> dict:
    """{fingerprint, retrain, reason, version}: `retrain` false when a registered version has
    this fingerprint and `force_retrain` is off."""
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
