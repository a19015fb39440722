"""The running stack's APIs as a client calls them: Airflow's REST API logged in as the admin,
MLflow's registry asked for the champion."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmsearch import config
from mmsearch.stack import processes
from mmsearch.stack.settings import StackError, StackSettings, running_settings, stack_secrets


def airflow_api(status: dict):
    """An httpx client on Airflow's REST API, logged in as the stack's admin (`status` as `status()` returns it)."""
    import httpx

    password = json.loads(Path(status["admin_password_file"]).read_text())[status["admin_user"]]
    login = {"username": status["admin_user"], "password": password}
    token = httpx.post(f"{status['airflow_url']}/auth/token", json=login).raise_for_status().json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=f"{status['airflow_url']}/api/v2", timeout=30, headers=headers)


def champion_version(settings: StackSettings, env: dict) -> str:
    """The version the registry's champion alias points at, asked of the stack's MLflow server;
    StackError if there is none, with the gate's last reason and what to do next."""
    import httpx

    auth = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    with httpx.Client(base_url=f"{settings.mlflow_url}/api/2.0/mlflow", auth=auth, timeout=10) as mlflow:
        found = mlflow.get("/registered-models/alias", params={"name": config.REGISTERED_MODEL, "alias": "champion"})
        if found.is_success:
            return found.json()["model_version"]["version"]
        # no such model: 404; a model without the alias: 400 "Registered model alias champion not found."
        if found.status_code not in (400, 404) or "not found" not in found.text:
            raise StackError(f"MLflow at {settings.mlflow_url} answered {found.status_code}: {found.text[:300]}")
        newest_first = {
            "filter": f"name='{config.REGISTERED_MODEL}'",
            "order_by": "version_number DESC",
            "max_results": 1,
        }
        latest = mlflow.get("/model-versions/search", params=newest_first)
        versions = latest.json().get("model_versions", []) if latest.is_success else []
    if not versions:
        raise StackError(
            f"nothing to serve: no model is registered as {config.REGISTERED_MODEL} yet. Next: trigger the "
            f"mmsearch_training DAG ({settings.airflow_url}) and serve once its register task promotes a champion"
        )
    newest = versions[0]
    reason = {tag["key"]: tag["value"] for tag in newest.get("tags", [])}.get("promotion_decision", "not recorded")
    raise StackError(
        f"nothing to serve: {config.REGISTERED_MODEL} has no champion. The gate kept v{newest['version']} "
        f"challenger: {reason}. Next: a run whose model no baseline "
        "beats significantly becomes the champion: more data or other candidates (docs/design.md, The model)"
    )


def registry_env() -> dict[str, str]:
    """MLFLOW_TRACKING_* for the running stack's MLflow server (what `mmsearch champion` acts on);
    empty when MLFLOW_TRACKING_URI is set already or no stack runs (then: make run's store)."""
    if os.environ.get("MLFLOW_TRACKING_URI") or "mlflow" not in processes.running():
        return {}
    return {
        "MLFLOW_TRACKING_URI": running_settings().mlflow_url,
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": stack_secrets()["mlflow_admin_password"],
    }
