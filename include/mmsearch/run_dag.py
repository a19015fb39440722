"""`make run`: one run of mmsearch_training through `airflow dags test`, then its summary."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from mmsearch import config as C
from mmsearch.io import read_json

DAG_ID = "mmsearch_training"


def _airflow() -> str:
    return str(Path(sys.executable).parent / "airflow")


def _airflow_json(args: list[str], env: dict | None = None) -> list:
    listed = subprocess.run([_airflow(), *args, "-o", "json"], capture_output=True, text=True, check=True, env=env)
    # Airflow may print warnings on stdout before the JSON: take the JSON line.
    lines = [line for line in listed.stdout.splitlines() if line.startswith("[")]
    return json.loads(lines[-1]) if lines else []


def latest_run(env: dict | None = None) -> dict:
    runs = _airflow_json(["dags", "list-runs", DAG_ID], env)
    if not runs:
        raise SystemExit(f"mmsearch run-dag: no run of {DAG_ID} was recorded")
    return max(runs, key=lambda run: run.get("run_after") or "")


def task_seconds(run_id: str, env: dict | None = None) -> dict:
    """Each task's duration in a recorded run, from Airflow's own start and end dates."""
    from datetime import datetime

    seconds = {}
    for ti in _airflow_json(["tasks", "states-for-dag-run", DAG_ID, run_id], env):
        if ti.get("start_date") and ti.get("end_date"):
            start, end = (datetime.fromisoformat(ti[k]) for k in ("start_date", "end_date"))
            seconds[ti["task_id"]] = (end - start).total_seconds()
    return seconds


def run_dag(conf: str = "{}") -> dict:
    json.loads(conf)  # fail early on a malformed conf
    started = time.monotonic()
    test = subprocess.run([_airflow(), "dags", "test", DAG_ID, "--conf", conf], check=False)
    seconds = round(time.monotonic() - started, 1)
    run = latest_run()
    run_dir = C.run_dir_for(run["run_id"])
    if test.returncode != 0 or run["state"] != "success":
        raise SystemExit(
            f"mmsearch run-dag: {DAG_ID} run {run['run_id']} ended '{run['state']}' "
            f"(airflow exit code {test.returncode}); outputs so far in {run_dir}"
        )
    summary_path = run_dir / "summary.json"
    return {
        "run_id": run["run_id"],
        "state": run["state"],
        "seconds": seconds,
        "run_dir": str(run_dir),
        "mlflow_tracking_uri": C.mlflow_tracking_uri(),
        "summary": read_json(summary_path) if summary_path.exists() else None,
    }
