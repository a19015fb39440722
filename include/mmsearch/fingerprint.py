"""A run's fingerprint: the md5 of every raw file, the code's git commit (and a hash of its
uncommitted changes, if any) and every setting that can change the model. `register` tags each
version with it (`lineage.lineage_tags`); `check_changes` looks for a registered version that
carries it already.
"""

from __future__ import annotations

import hashlib
import json

from mmsearch import config, paths

TAG = "fingerprint"
# What the code of a run is: the package, the DAGs and the locked environments.
CODE_PATHS = ("include", "dags", "plugins", "pyproject.toml", "requirements.txt", "requirements-ml.txt")


def code_version() -> str:
    """The git commit, and a hash of the uncommitted changes to the code when there are any."""
    commit = paths.git_commit()
    diff = paths.git("diff", "HEAD", "--", *CODE_PATHS)
    return f"{commit}+{hashlib.sha256(diff.encode()).hexdigest()[:12]}" if diff else commit


def fingerprint(lineage: dict, cfg: config.RunConfig) -> dict:
    """The run's inputs and their hash: data (file md5s), code, the model's settings."""
    parts = {"data": dict(sorted(lineage["file_md5"].items())), "code": code_version(), "config": cfg.model_settings()}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": digest, **parts}


def registered_with(cfg: config.RunConfig, digest: str) -> list:
    """The registered versions carrying this fingerprint, newest first."""
    from mlflow import MlflowClient

    from mmsearch import tracking

    tracking.setup(cfg)
    client = MlflowClient()
    found = client.search_model_versions(f"name = '{cfg.registered_model_name}' and tags.{TAG} = '{digest}'")
    # a search result may leave the aliases out: read each version whole
    return [client.get_model_version(v.name, v.version) for v in sorted(found, key=lambda v: -int(v.version))]
