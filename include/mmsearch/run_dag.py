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


def latest_run() -> dict:
    listed = subprocess.run([_airflow(), "dags", "list-runs", DAG_ID, "-o", "json"], capture_output=True, text=True,
                            check=True)
    # Airflow may print warnings on stdout before the JSON: take the JSON line.
    lines = [line for line in listed.stdout.splitlines() if line.startswith("[")]
    runs = json.loads(lines[-1]) if lines else []
    if not runs:
        raise SystemExit(f"mmsearch run-dag: no run of {DAG_ID} was recorded")
    return max(runs, key=lambda run: run.get("run_after") or "")


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
