"""Each component's state, as its own endpoint reports it: MLflow's /health, Airflow's
/api/v2/monitor/health, the Celery workers' ping through Redis, the re-ranker's /health."""

from __future__ import annotations

import json
import subprocess
import sys

from mmsearch.stack import processes
from mmsearch.stack.settings import StackSettings, stack_env

HEALTHY = "healthy"


def get_json(url: str, timeout: float = 3.0) -> dict | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body.strip().startswith(b"{") else {"status": body.decode().strip()}
    except (OSError, ValueError):
        return None


def _celery_workers(env: dict) -> set[str]:
    """The Celery workers answering a ping through the broker."""
    code = (
        "import json; from airflow.providers.celery.executors.celery_executor import app; "
        "print(json.dumps(sorted(app.control.inspect(timeout=2).ping() or {})))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    lines = result.stdout.strip().splitlines()
    return set(json.loads(lines[-1])) if result.returncode == 0 and lines else set()


def health(settings: StackSettings, env: dict | None = None) -> dict:
    """Each component's state: healthy, down, or what Airflow says of its own parts."""
    states = {"mlflow": HEALTHY if get_json(f"{settings.mlflow_url}/health") else "down"}
    airflow = get_json(f"{settings.airflow_url}/api/v2/monitor/health")
    states["api-server"] = HEALTHY if airflow else "down"
    for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        states[component] = (airflow or {}).get(component, {}).get("status") or "down"
    if settings.executor == "celery":
        answering = _celery_workers(env or stack_env(settings))
        for number in range(1, settings.workers + 1):
            up = any(name.startswith(f"worker-{number}@") for name in answering)
            states[f"worker-{number}"] = HEALTHY if up else "down"
    if "serve" in processes.recorded():
        states["serve"] = HEALTHY if get_json(f"{settings.serve_url}/health") else "down"
    return states
