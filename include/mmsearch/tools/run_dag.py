"""`make run`: one run of mmsearch_training through `airflow dags test`, a line per task as it
ends, then the few lines a person reads (the run's summary and what to do next), or, when it
failed, the failing task and its one-line reason. Airflow's own log goes to a file, named at the end."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from mmsearch import config, paths
from mmsearch.io import read_json
from mmsearch.run_context import failures_file
from mmsearch.stack.components import airflow_cli

DAG_ID = "mmsearch_training"
LOG_NAME = "airflow-dags-test.log"
# What `airflow dags test` logs around each task it runs, and its task runner inside one.
TASK_STARTED = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+) map_index=(?P<index>-?\d+)")
TASK_ENDED = re.compile(r"\[DAG TEST\] end task task_id=")
TASK_STATES = {"Task failed with exception": "failed", "Skipping task.": "skipped"}


class RunFailed(RuntimeError):
    """The DAG run did not succeed: the message names the failing task and why."""


def _airflow_json(args: list[str], env: dict | None = None) -> list:
    listed = subprocess.run([airflow_cli(), *args, "-o", "json"], capture_output=True, text=True, check=True, env=env)
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
    seconds = {}
    for ti in _airflow_json(["tasks", "states-for-dag-run", DAG_ID, run_id], env):
        if ti.get("start_date") and ti.get("end_date"):
            start, end = (datetime.fromisoformat(ti[k]) for k in ("start_date", "end_date"))
            mapped = str(ti.get("map_index", "")) not in ("-1", "None", "")  # the CLI prints "" for unmapped
            key = ti["task_id"] + (f"[{ti['map_index']}]" if mapped else "")
            seconds[key] = (end - start).total_seconds()
    return seconds


def failure_reason(run_id: str) -> str:
    path = failures_file(run_id)
    if not path.exists():
        return "no task recorded a reason (see Airflow's log)"
    failed = read_json(path)["failed"]
    return "; ".join(f"{item['task_id']} failed: {item['reason']}" for item in failed)


def follow(output, log_file, progress) -> None:
    """Copy `airflow dags test`'s output to `log_file`; call `progress` with a line per task that ends."""
    task, started, state = None, 0.0, "success"
    for line in output:
        log_file.write(line)
        if found := TASK_STARTED.search(line):
            index = int(found["index"])
            task, started, state = found["task"] + (f"[{index}]" if index >= 0 else ""), time.monotonic(), "success"
        elif task and TASK_ENDED.search(line):
            progress(f"  {task:<24} {state:<8} {time.monotonic() - started:6.1f} s")
            task = None
        elif task:
            state = next((name for mark, name in TASK_STATES.items() if mark in line), state)


def _dags_test(conf: str, log_path: Path, logical_date: str | None) -> int:
    command = [airflow_cli(), "dags", "test", DAG_ID, *([logical_date] if logical_date else []), "--conf", conf]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        follow(process.stdout, log_file, lambda line: print(line, flush=True))
        return process.wait()


def _keep_with_run(log_path: Path, run: dict, started_at: datetime) -> Path:
    """The log beside the run's outputs (runs/<run>/, made for it if the run wrote nothing), failed
    or not; left where it is if this command recorded no run (the latest is then an earlier one's).
    `run_after` is when a run was created (the CLI's `start_date` shows a given logical date)."""
    if not run.get("run_after") or datetime.fromisoformat(run["run_after"]) < started_at:
        return log_path
    run_dir = paths.run_dir_for(run["run_id"])
    run_dir.mkdir(parents=True, exist_ok=True)
    return Path(log_path.replace(run_dir / LOG_NAME))


def next_step(summary: dict) -> str:
    """The summary's last line: what a person can do now, given how the run ended."""
    if "skipped" in summary:
        force = "make run CONF='{\"force_retrain\": true}'"
        return f"next: `make mlflow-ui` shows the registered runs; `{force}` trains anyway"
    registry = summary["registry"]
    version, decision = registry["version"], registry["decision"]
    if registry["promoted"]:
        return (
            f"next: `make mlflow-ui` shows this run (training curves, evaluation figures); v{version} is the "
            f"champion: load models:/{registry['registered_model']}@champion (README: After make run), or serve "
            "it with the stack"
        )
    if decision.get("champion_version"):
        return f"next: v{decision['champion_version']} stays champion; `make mlflow-ui` compares the two runs"
    return (
        f"next: no champion, so nothing can be served (the gate kept v{version} challenger, reason above); "
        "a run whose model no baseline significantly beats becomes champion: other candidates "
        "(`make run CONF='{\"candidates\": [...]}'`) or more data (`make real-data`)"
    )


def run_dag(conf: str = "{}", as_json: bool = False, logical_date: str | None = None) -> dict | str:
    """Check the conf (one line if it is wrong, before any work), run the DAG, summarise it."""
    from mmsearch.summary import summary_text

    try:
        values = json.loads(conf)
    except json.JSONDecodeError as error:
        raise config.ConfigError(f"the conf is not JSON: {error}") from None
    if config.RunConfig.from_mapping(values).promotion == "approve":
        raise config.ConfigError(
            "promotion 'approve' waits for a person to answer in the Airflow UI, which `make run` "
            "(airflow dags test) has not: use it on the server stack (make up), or leave promotion 'auto'"
        )
    log_path = paths.mmsearch_home() / "logs" / f"dags-test-{time.strftime('%Y%m%dT%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"{DAG_ID}: airflow dags test, a line per task", flush=True)
    started, started_at = time.monotonic(), datetime.now(UTC)
    returncode = _dags_test(conf, log_path, logical_date)
    seconds = round(time.monotonic() - started, 1)
    run = latest_run()
    log_path = _keep_with_run(log_path, run, started_at)
    if returncode != 0 or run["state"] != "success":
        raise RunFailed(
            f"{DAG_ID} run {run['run_id']} ended '{run['state']}' after {seconds} s: "
            f"{failure_reason(run['run_id'])}\nAirflow's log: {log_path}"
        )
    summary = read_json(paths.run_dir_for(run["run_id"]) / "summary.json")
    uri = paths.redact_uri(paths.mlflow_tracking_uri())
    if as_json:
        return {**summary, "seconds": seconds, "mlflow_tracking_uri": uri, "airflow_log": str(log_path)}
    return (
        f"{summary_text(summary)}\nMLflow: {uri}; {seconds} s end to end; Airflow's log: {log_path}\n"
        f"{next_step(summary)}"
    )
