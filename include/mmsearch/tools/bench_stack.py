"""`make bench-stack`: the server stack's figures, measured on real processes.

In a fresh home with free ports: `stack up` (PostgreSQL, LocalExecutor) to all healthy, from
an empty home and again on the existing cluster; `stack up --executor celery --workers 2`, its
idle memory (proportional set size, so shared pages count once); a run of the bundled sample
triggered through the REST API to its registered model; then the re-ranking service with the
182k-pair bench's catalogue (164,900 products) loaded: start to ready, 100 candidates by id,
1,000 full vectors as .npy, memory, a champion swap under load; against the same pyfunc
in-process, on the same rows; one unknown candidate among 100 against none; a newer product file
published under load (failed requests, seconds to serve it, peak memory). Prints a table and writes
`$MMSEARCH_HOME/bench/stack.json`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mmsearch import paths
from mmsearch.stack.clients import airflow_api
from mmsearch.stack.settings import free_port_env, running_settings, stack_env
from mmsearch.tools.bench_serving import in_process, mmsearch_json, reranking

FAST = {"epochs": 4, "steps_per_epoch": 40}
TARGETS = {
    "up_local_seconds": "< 45 s (aim < 30 s)",
    "idle_memory_celery_mb": "< 3 GB (aim < 2.5 GB)",
    "trigger_to_registered_celery_seconds": "< 90 s (aim < 60 s)",
    "rerank_median_100_ids_ms": "<= 25 ms (aim <= 10 ms)",
    "rerank_p99_100_ids_ms": "<= 60 ms (aim <= 30 ms)",
    "rerank_two_clients_over_in_process_arrays": ">= 0.3 (aim >= 0.5)",
    "score_npy_over_in_process_arrays": ">= 0.3 (aim >= 0.6)",
    "rerank_memory_mb": "< 1,500 MB (aim < 1,000 MB)",
    "rerank_start_to_ready_seconds": "< 30 s (aim < 10 s)",
    "swap_failed_requests": "0",
    "rerank_one_unknown_over_all_known": "<= 1.1",
    "catalogue_swap_failed_requests": "0",
    "catalogue_swap_seconds_published_to_served": "<= 2 polls (aim 1): 2 s here",
    "catalogue_swap_peak_over_one_catalogue": "<= 2.2",
}


def _timed_up(env: dict, *args: str) -> tuple[float, dict]:
    started = time.monotonic()
    status = mmsearch_json(env, "stack", "up", *args)
    return time.monotonic() - started, status


def _bench_env(root: Path) -> dict:
    root.chmod(0o711)  # as root, PostgreSQL runs as `postgres` and must enter the home
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    home = root / "home"
    homes = {"MMSEARCH_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow")}
    # no nightly run and no asset-triggered rerun: only the run the bench triggers
    return {**env, **free_port_env(), **homes, "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}


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
        url = f"/dags/mmsearch_training/dagRuns/{run_id}"
        while (state := api.get(url).json()["state"]) not in ("success", "failed"):
            time.sleep(1)
        if state != "success":
            raise RuntimeError(f"the benchmark's run {run_id} failed")
        return trigger_to_registered(api, run_id)


def _bench_raw(root: Path, env: dict) -> Path:
    """The 182k-pair bench's raw data (164,900 products), generated as `make bench` does."""
    from mmsearch.tools.bench import PAIRS_PER_QUERY, PRODUCTS_PER_PAIR

    out = root / "raw-182k"
    sizes = ["--queries", str(round(181_701 / PAIRS_PER_QUERY)), "--products", str(round(181_701 * PRODUCTS_PER_PAIR))]
    mmsearch_json(env, "sample-data", "--out", str(out), *sizes, "--mean-judgements", str(round(PAIRS_PER_QUERY, 2)))
    return out


def serving_figures(root: Path, repeat: int) -> dict:
    """The re-ranker against the pyfunc in-process."""
    settings = running_settings()
    env = stack_env(settings)
    figures = reranking(settings, env, _bench_raw(root, env), repeat)
    rates = in_process(env, repeat)
    figures.update({f"in_process_rows_per_second_{kind}": round(rate) for kind, rate in rates.items()})
    two = figures["rerank_rows_per_second_two_clients"]
    figures["rerank_two_clients_over_in_process_arrays"] = round(two / rates["arrays_100"], 2)
    figures["score_npy_over_in_process_arrays"] = round(
        figures["score_npy_rows_per_second_1000_rows"] / rates["arrays_1000"], 2
    )
    return figures


def main(repeat: int = 3) -> dict:
    figures: dict = {}
    out = paths.mmsearch_home() / "bench" / "stack.json"  # before the bench's own home replaces MMSEARCH_HOME
    with tempfile.TemporaryDirectory(prefix="mmsearch-bench-stack-") as tmp:
        env = _bench_env(Path(tmp))
        os.environ.update(env)  # this process reads the stack's home and ports as its commands do
        first, _ = _timed_up(env)
        mmsearch_json(env, "stack", "down")
        again = []
        for _ in range(repeat):
            seconds, _ = _timed_up(env)
            again.append(seconds)
            mmsearch_json(env, "stack", "down")
        figures["up_local_first_seconds"] = round(first, 1)
        figures["up_local_seconds"] = round(statistics.median(again), 1)
        seconds, status = _timed_up(env, "--executor", "celery", "--workers", "2")
        try:
            figures["up_celery_seconds"] = round(seconds, 1)
            time.sleep(20)  # idle: nothing scheduled, the components settled
            idle = mmsearch_json(env, "stack", "status", "--json")["memory_mb"]
            figures["idle_memory_celery_mb"] = idle["total"]
            figures["idle_memory_celery_by_component_mb"] = idle
            figures["trigger_to_registered_celery_seconds"] = round(_run_to_registered(status), 1)
            figures.update(serving_figures(Path(tmp), repeat))
        finally:
            mmsearch_json(env, "stack", "down")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in figures.items():
        if not isinstance(value, dict):
            print(f"{name:44} {value!s:>10}   {TARGETS.get(name, '')}", file=sys.stderr)
    return figures
