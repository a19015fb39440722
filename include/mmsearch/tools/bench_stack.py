"""`make bench-stack`: the server stack's figures, measured on real processes.

In a fresh home with free ports: `stack up` (PostgreSQL, LocalExecutor) to all healthy, from
an empty home and again on the existing cluster; `stack up --executor celery --workers 2`, its
idle memory (proportional set size, so shared pages count once); a run of the bundled sample
triggered through the REST API to its registered model; then `stack serve` and the served
champion's latency (100-row requests) and throughput (1,000-row requests, one client and two at
once) against the same pyfunc's rows per second in-process, on the same rows. Prints a table and
writes `$MMSEARCH_HOME/bench/stack.json`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mmsearch import config as C
from mmsearch.stack.clients import airflow_api
from mmsearch.stack.settings import free_port_env

EMBEDDINGS = ("query_embedding", "product_text_embedding", "product_image_embedding")
FAST = {"epochs": 4, "steps_per_epoch": 40}
TARGETS = {
    "up_local_seconds": "< 45 s (aim < 30 s)",
    "idle_memory_celery_mb": "< 3 GB (aim < 2.5 GB)",
    "trigger_to_registered_celery_seconds": "< 90 s (aim < 60 s)",
    "median_100_rows_ms": "< 300 ms (aim < 100 ms)",
    "served_over_in_process": ">= 0.25 (aim >= 0.5)",
}


def request_rows(n: int, seed: int) -> np.ndarray:
    """[n, 3, 768] unit float32 vectors: CLIP embeddings' shape and scale."""
    vectors = np.random.default_rng(seed).standard_normal((n, len(EMBEDDINGS), 768)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=2, keepdims=True)


def request_body(vectors: np.ndarray) -> str:
    """`dataframe_split` JSON with each float32 as its shortest exact decimal (what orjson and
    numpy print), not as a 17-digit double: CLIP embeddings are float32."""
    text = vectors.astype(str)
    rows = ("[" + ",".join("[" + ",".join(column) + "]" for column in row) + "]" for row in text)
    return '{"dataframe_split":{"columns":' + json.dumps(list(EMBEDDINGS)) + ',"data":[' + ",".join(rows) + "]}}"


def in_process_rows_per_second(model_uri: str, rows: int, seed: int, repeat: int) -> dict:
    """The same pyfunc, loaded in this process, predicting the same rows (run in the ML env): as
    the Python lists a JSON parser makes of them (what the server gets, without the JSON), and as
    numpy arrays (what a batch job reading Parquet has)."""
    import mlflow
    import pandas as pd

    vectors = request_rows(rows, seed)
    model = mlflow.pyfunc.load_model(model_uri)
    frames = {
        "lists": pd.DataFrame({name: vectors[:, i].tolist() for i, name in enumerate(EMBEDDINGS)}),
        "arrays": pd.DataFrame({name: list(vectors[:, i].astype(np.float64)) for i, name in enumerate(EMBEDDINGS)}),
    }
    rates = {}
    for kind, frame in frames.items():
        model.predict(frame.head(10))  # warm
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            model.predict(frame)
            timings.append(time.perf_counter() - started)
        rates[kind] = rows / statistics.median(timings)
    return rates


def _mmsearch(env: dict, *args: str) -> dict:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mmsearch"), *args], env=env, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise RuntimeError(f"mmsearch {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def _timed_up(env: dict, *args: str) -> tuple[float, dict]:
    started = time.monotonic()
    status = _mmsearch(env, "stack", "up", *args)
    return time.monotonic() - started, status


def _bench_env(root: Path) -> dict:
    root.chmod(0o711)  # as root, PostgreSQL runs as `postgres` and must enter the home
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    home = root / "home"
    # no nightly run and no asset-triggered rerun: only the run the bench triggers
    return {
        **env,
        **free_port_env(),
        "MMSEARCH_HOME": str(home),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    }


def trigger_to_registered(api, run_id: str) -> float:
    """Seconds from the trigger (the run's `queued_at`) to `model.register`'s end, as Airflow recorded them."""
    from datetime import datetime

    run = api.get(f"/dags/mmsearch_training/dagRuns/{run_id}").raise_for_status().json()
    register = api.get(f"/dags/mmsearch_training/dagRuns/{run_id}/taskInstances/model.register").raise_for_status()
    ended = datetime.fromisoformat(register.json()["end_date"])
    return (ended - datetime.fromisoformat(run["queued_at"])).total_seconds()


def _run_to_registered(status: dict) -> float:
    with airflow_api(status) as api:
        api.patch("/dags/mmsearch_training", json={"is_paused": False}).raise_for_status()
        run = api.post("/dags/mmsearch_training/dagRuns", json={"logical_date": None, "conf": FAST}).raise_for_status()
        run_id = run.json()["dag_run_id"]
        while (state := api.get(f"/dags/mmsearch_training/dagRuns/{run_id}").json()["state"]) not in (
            "success",
            "failed",
        ):
            time.sleep(1)
        if state != "success":
            raise RuntimeError(f"the benchmark's run {run_id} failed")
        return trigger_to_registered(api, run_id)


def _serving(status: dict, env: dict, repeat: int) -> dict:
    import httpx

    url = f"{status['serve_url']}/invocations"
    headers = {"Content-Type": "application/json"}
    small = request_body(request_rows(100, seed=1))
    large = request_body(request_rows(1000, seed=2))
    with httpx.Client(timeout=120) as client:
        client.post(url, content=small, headers=headers).raise_for_status()  # warm
        latencies = []
        for _ in range(50):
            started = time.perf_counter()
            client.post(url, content=small, headers=headers).raise_for_status()
            latencies.append(time.perf_counter() - started)

        def one_large(_=None) -> float:
            started = time.perf_counter()
            client.post(url, content=large, headers=headers).raise_for_status()
            return time.perf_counter() - started

        sequential = 1000 / statistics.median([one_large() for _ in range(repeat)])
        with ThreadPoolExecutor(2) as pool:
            started = time.perf_counter()
            list(pool.map(one_large, range(2 * repeat)))
            concurrent = 2 * repeat * 1000 / (time.perf_counter() - started)
    code = (
        "from mmsearch.tools.bench_stack import in_process_rows_per_second as f; "
        f"import json; print(json.dumps(f('models:/mmsearch-esci@champion', 1000, 2, {repeat})))"
    )
    ml_env = {
        **env,
        "MLFLOW_TRACKING_URI": status["mlflow_url"],
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": json.loads(Path(status["secrets_file"]).read_text())["mlflow_admin_password"],
    }
    out = subprocess.run(
        [os.environ.get("MMSEARCH_ML_PYTHON", str(C.REPO_ROOT / ".venvs/ml/bin/python")), "-c", code],
        env=ml_env,
        capture_output=True,
        text=True,
        check=True,
    )
    in_process = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "median_100_rows_ms": round(statistics.median(latencies) * 1000, 1),
        "p90_100_rows_ms": round(float(np.percentile(latencies, 90)) * 1000, 1),
        "request_mb_1000_rows": round(len(large) / 1e6, 1),
        "served_rows_per_second_one_client": round(sequential),
        "served_rows_per_second_two_clients": round(concurrent),
        "in_process_rows_per_second_lists": round(in_process["lists"]),
        "in_process_rows_per_second_arrays": round(in_process["arrays"]),
        "served_over_in_process": round(sequential / in_process["lists"], 2),
        "served_over_in_process_two_clients": round(concurrent / in_process["lists"], 2),
        "served_over_in_process_arrays": round(sequential / in_process["arrays"], 2),
        "served_over_in_process_arrays_two_clients": round(concurrent / in_process["arrays"], 2),
    }


def main(repeat: int = 3) -> dict:
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="mmsearch-bench-stack-") as tmp:
        env = _bench_env(Path(tmp))
        first, _ = _timed_up(env)
        _mmsearch(env, "stack", "down")
        again = []
        for _ in range(repeat):
            seconds, _ = _timed_up(env)
            again.append(seconds)
            _mmsearch(env, "stack", "down")
        figures["up_local_first_seconds"] = round(first, 1)
        figures["up_local_seconds"] = round(statistics.median(again), 1)
        seconds, status = _timed_up(env, "--executor", "celery", "--workers", "2")
        try:
            figures["up_celery_seconds"] = round(seconds, 1)
            time.sleep(20)  # idle: nothing scheduled, the components settled
            idle = _mmsearch(env, "stack", "status", "--json")["memory_mb"]
            figures["idle_memory_celery_mb"] = idle["total"]
            figures["idle_memory_celery_by_component_mb"] = idle
            figures["trigger_to_registered_celery_seconds"] = round(_run_to_registered(status), 1)
            _mmsearch(env, "stack", "serve")
            figures.update(_serving(_mmsearch(env, "stack", "status", "--json"), env, repeat))
        finally:
            _mmsearch(env, "stack", "down")
    out = C.mmsearch_home() / "bench" / "stack.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in figures.items():
        if not isinstance(value, dict):
            print(f"{name:40} {value!s:>10}   {TARGETS.get(name, '')}", file=sys.stderr)
    return figures
