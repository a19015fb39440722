"""`make run`: one run of mmsearch_training through `airflow dags test`, then the few lines a
person reads (the run's summary), or, when it failed, the failing task and its one-line reason."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from mmsearch import config as C
from mmsearch.io import read_json

DAG_ID = "mmsearch_training"


class RunFailed(RuntimeError):
    """The DAG run did not succeed: the message names the failing task and why."""


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
        raise RunFailed(f"no run of {DAG_ID} was recorded")
    return max(runs, key=lambda run: run.get("run_after") or "")


def task_seconds(run_id: str, env: dict | None = None) -> dict:
    """Each task's duration in a recorded run, from Airflow's own start and end dates."""
    from datetime import datetime

    seconds = {}
    for ti in _airflow_json(["tasks", "states-for-dag-run", DAG_ID, run_id], env):
        if ti.get("start_date") and ti.get("end_date"):
            start, end = (datetime.fromisoformat(ti[k]) for k in ("start_date", "end_date"))
            mapped = str(ti.get("map_index", "")) not in ("-1", "None", "")  # the CLI prints "" for unmapped
            key = ti["task_id"] + (f"[{ti['map_index']}]" if mapped else "")
            seconds[key] = (end - start).total_seconds()
    return seconds


def failures_file(run_id: str) -> Path:
    """Where the DAG's failure callback records each failed task's one-line reason."""
    return C.mmsearch_home() / "failures" / f"{C.run_dir_for(run_id).name}.json"


def failure_reason(run_id: str) -> str:
    path = failures_file(run_id)
    if not path.exists():
        return "no task recorded a reason (see the log above)"
    failed = read_json(path)["failed"]
    return "; ".join(f"{item['task_id']} failed: {item['reason']}" for item in failed)


def run_dag(conf: str = "{}", as_json: bool = False) -> dict | str:
    """Check the conf (one line if it is wrong, before any work), run the DAG, summarise it."""
    from mmsearch.register import summary_text

    try:
        values = json.loads(conf)
    except json.JSONDecodeError as error:
        raise C.ConfigError(f"the conf is not JSON: {error}") from None
    C.RunConfig.from_mapping(values)
    started = time.monotonic()
    test = subprocess.run([_airflow(), "dags", "test", DAG_ID, "--conf", conf], check=False)
    seconds = round(time.monotonic() - started, 1)
    run = latest_run()
    if test.returncode != 0 or run["state"] != "success":
        raise RunFailed(
            f"{DAG_ID} run {run['run_id']} ended '{run['state']}' after {seconds} s: {failure_reason(run['run_id'])}"
        )
    summary = read_json(C.run_dir_for(run["run_id"]) / "summary.json")
    if as_json:
        return {**summary, "seconds": seconds, "mlflow_tracking_uri": C.redact_uri(C.mlflow_tracking_uri())}
    return (
        f"{summary_text(summary)}\nMLflow: {C.redact_uri(C.mlflow_tracking_uri())}; "
        f"{seconds} s end to end; `mmsearch run-dag --json` prints all of it"
    )
