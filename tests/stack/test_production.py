"""The production path, for real: `mmsearch stack up --executor celery --workers 2` (what
`make up EXECUTOR=celery WORKERS=2` runs) starts PostgreSQL, Redis, Airflow 3 with two Celery
workers and an MLflow server behind basic auth; a person triggers the DAG from the Trigger form
in the browser; `mmsearch stack serve` serves the champion; then the faults a team meets: a
worker killed in the middle of `train`, Redis restarted between two tasks and PostgreSQL during
one (in the same run), and MLflow credentials that stop working before `register`. Every process is
gone after `mmsearch stack down`. Figures go to test-artifacts/production-figures.json."""

import contextlib
import json
import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest

from mmsearch.tools.bench_stack import trigger_to_registered
from mmsearch.tools.sample_world import SampleSpec
from tests import readme
from tests.helpers import stack_env
from tests.stack.support import (
    ARTIFACTS,
    DAG_ID,
    MODEL,
    failure_report,
    mlflow_client,
    mlflow_credentials,
    mmsearch,
    running_stack,
    task_log,
    task_states,
    trigger_from_the_form,
    wait_for_run,
)

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(1500)]

FAST = {"epochs": 4, "steps_per_epoch": 40}
FIGURES: dict = {}

BUNDLED_PRODUCTS = SampleSpec().products  # data/raw, the sample the README's commands pull


@pytest.fixture(scope="module")
def stack(request):
    # only the runs this test starts: no nightly run, no asset-triggered rerun
    env = stack_env("production", AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False")
    with running_stack(env, "make up EXECUTOR=celery WORKERS=2", request=request) as running:
        FIGURES["startup_seconds"] = running["status"]["startup_seconds"]
        FIGURES["memory_mb_idle"] = running["status"]["memory_mb"]
        yield running
        FIGURES["memory_mb_after_runs"] = mmsearch(env, "stack", "status", "--json")["memory_mb"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "production-figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")


def trigger(api: httpx.Client, conf: dict) -> str:
    run = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf}).raise_for_status().json()
    return run["dag_run_id"]


def wait_for_task(
    api: httpx.Client, run_id: str, task_id: str, states: set, timeout: float = 900, poll: float = 0.5
) -> dict:
    """The first task instance of `task_id` in one of `states`. The timeout covers the pipeline
    before the task: CI's run of four suites on two cores once took more than 300 s to evaluate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").raise_for_status().json()
        found = [ti for ti in listed["task_instances"] if ti["task_id"] == task_id and ti["state"] in states]
        if found:
            return found[0]
        time.sleep(poll)
    raise AssertionError(f"{task_id} never reached {states}: {task_states(api, run_id)}")


def mlflow_as(status: dict, auth: tuple | None = None) -> httpx.Client:
    return httpx.Client(base_url=f"{status['mlflow_url']}/api/2.0/mlflow", auth=auth or mlflow_credentials(status))


def versions_of(status: dict, run_id: str, auth: tuple | None = None) -> list[dict]:
    """The model versions the DAG run `run_id` registered."""
    with mlflow_as(status, auth) as mlflow:
        found = mlflow.get("/model-versions/search", params={"filter": f"name = '{MODEL}'"}).raise_for_status()
    tags = {v["version"]: {t["key"]: t["value"] for t in v["tags"]} for v in found.json()["model_versions"]}
    return [v for v in found.json()["model_versions"] if tags[v["version"]].get("airflow_run_id") == run_id]


def champion_version(status: dict, auth: tuple | None = None) -> str | None:
    with mlflow_as(status, auth) as mlflow:
        model = mlflow.get("/registered-models/get", params={"name": MODEL}).raise_for_status().json()
    return {a["alias"]: a["version"] for a in model["registered_model"].get("aliases", [])}.get("champion")


@pytest.fixture(scope="module")
def form_run(stack, airflow_api, page):
    """Trigger pressed in the browser with two fields edited; the run goes through Celery."""
    airflow_api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
    url = stack["status"]["airflow_url"]
    run = trigger_from_the_form(page, url, airflow_api, {k: str(v) for k, v in FAST.items()}, "celery-trigger.png")
    finished = wait_for_run(airflow_api, run["dag_run_id"])
    assert finished["state"] == "success", failure_report(airflow_api, run["dag_run_id"])
    FIGURES["trigger_to_registered_seconds"] = round(trigger_to_registered(airflow_api, run["dag_run_id"]), 1)
    return finished


def test_every_port_listens_on_loopback_only(stack):
    status = mmsearch(stack["env"], "stack", "status", "--json")
    listening = status["listening"]
    assert {s["ip"] for s in listening} == {"127.0.0.1"}, listening
    assert {s["port"] for s in listening} == set(status["ports"].values()), (listening, status["ports"])
    assert {"postgres", "redis", "worker-1", "worker-2", "log-server"} <= set(status["pids"])
    assert set(status["health"].values()) == {"healthy"}, status["health"]


def test_the_secrets_file_is_private_and_mlflow_refuses_anonymous_requests(stack):
    status = stack["status"]
    assert Path(status["secrets_file"]).stat().st_mode & 0o777 == 0o600
    anonymous = httpx.get(f"{status['mlflow_url']}/api/2.0/mlflow/experiments/search", params={"max_results": 1})
    assert anonymous.status_code == 401
    with mlflow_client(status) as mlflow:
        assert mlflow.get("/experiments/search", params={"max_results": 1}).status_code == 200


def test_the_form_run_registers_through_celery_workers(stack, form_run):
    assert form_run["conf"]["epochs"] == 4 and form_run["conf"]["steps_per_epoch"] == 40  # the edited fields
    assert form_run["conf"]["batch_size"] == 32  # untouched fields keep their defaults
    assert len(versions_of(stack["status"], form_run["dag_run_id"])) == 1
    logs = Path(stack["status"]["logs"])
    for worker in ("worker-1", "worker-2"):  # both took tasks
        assert "execute_workload" in (logs / f"{worker}.log").read_text(), worker


def test_task_logs_hold_no_password(stack, form_run):
    keys = json.loads(Path(stack["status"]["secrets_file"]).read_text())
    logs = Path(stack["env"]["AIRFLOW_HOME"]) / "logs"
    texts = [path.read_text(errors="replace") for path in logs.rglob("*.log")]
    assert texts
    for name in ("mlflow_admin_password", "postgres_password", "redis_password"):
        assert not any(keys[name] in text for text in texts), name


@pytest.fixture(scope="module")
def served(stack, form_run):
    """The README's `make serve`: the re-ranking service of the champion."""
    result = readme.run(readme.command("servers", "make serve "), stack["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    # the person's line goes to stderr; stdout carries only the result (after the line make echoes)
    line = rf"^champion mmsearch-esci v\d+ re-ranks {BUNDLED_PRODUCTS} products at"
    assert re.search(line, result.stderr, re.M), result.stderr
    return json.loads(result.stdout[result.stdout.index("\n{") :])


def test_the_readme_reranking_example_and_its_curl_get_the_same_ranking(stack, served):
    """The README's serving block, pasted in the checkout the form run pulled data/raw into."""
    result = readme.run(readme.block("serving"), stack["env"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    printed, curl_answer = result.stdout.rstrip().rsplit("\n", 1)
    table = [line.split() for line in printed.splitlines() if re.match(r"  B\w+ ", line)]
    products = json.loads(curl_answer)["products"]
    assert [row[0] for row in table] == [p["product_id"] for p in products] and len(table) == 8, result.stdout
    gains = [p["expected_gain"] for p in products]
    assert gains == sorted(gains, reverse=True) and {row[1] for row in table} <= {"E", "S", "C", "I"}


def test_the_reranker_wants_its_token_and_reports_its_version_and_metrics(stack, served):
    from prometheus_client.parser import text_string_to_metric_families

    url = served["serve_url"]
    assert httpx.post(f"{url}/rerank", json={"query_embedding": [0.1] * 768, "product_ids": ["x"]}).status_code == 401
    health = httpx.get(f"{url}/health").json()
    assert health["model_version"] == served["version"] and health["catalogue_rows"] == BUNDLED_PRODUCTS
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
    assert families["rerank_model_version"].samples[0].value == float(served["version"])
    statuses = {s.labels["status"] for s in families["rerank_requests"].samples if s.labels.get("path") == "/rerank"}
    assert {"200", "401"} <= statuses


def test_a_worker_killed_in_train_is_replaced_by_the_other(stack, airflow_api, form_run):
    # the workers are known before the run starts: asked for once `train` runs, they took long
    # enough on a loaded machine for the training to end first
    workers = {
        name: pid
        for name, pid in mmsearch(stack["env"], "stack", "status", "--json")["pids"].items()
        if "worker" in name
    }
    run_id = trigger(airflow_api, {**FAST, "force_retrain": True})
    running = wait_for_task(airflow_api, run_id, "model.train", {"running"})
    deadline = time.monotonic() + 30
    while not running.get("pid") and time.monotonic() < deadline:  # the runner reports its PID on start
        time.sleep(0.5)
        running = wait_for_task(airflow_api, run_id, "model.train", {"running"})
    victim = next(
        name
        for name, pid in workers.items()
        if running["pid"] in {p.pid for p in psutil.Process(pid).children(recursive=True)}
    )
    tree = [psutil.Process(workers[victim]), *psutil.Process(workers[victim]).children(recursive=True)]
    # each worker runs two tasks: the victim may hold both trainings (or the baselines) too
    listed = airflow_api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").raise_for_status().json()
    # running ones only: a finished task's recorded PID may be the pool process that now runs train
    killed = {
        (ti["task_id"], ti["map_index"])
        for ti in listed["task_instances"]
        if ti["state"] == "running" and ti["pid"] in {p.pid for p in tree}
    }
    assert ("model.train", running["map_index"]) in killed
    for process in tree:  # the machine is gone: the worker and everything it ran
        with contextlib.suppress(ProcessLookupError):  # a child that ended on its own since the listing
            os.kill(process.pid, signal.SIGKILL)
    finished = wait_for_run(airflow_api, run_id, timeout=900)
    assert finished["state"] == "success", failure_report(airflow_api, run_id)
    listed = airflow_api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").raise_for_status().json()
    retried = {(ti["task_id"], ti["map_index"]) for ti in listed["task_instances"] if ti["try_number"] > 1}
    assert retried == killed  # the killed tasks ran again, on the worker left, and nothing else did
    assert len(versions_of(stack["status"], run_id)) == 1  # no duplicate model version
    FIGURES["worker_killed_run_seconds"] = round(
        (datetime.fromisoformat(finished["end_date"]) - datetime.fromisoformat(finished["start_date"])).total_seconds()
    )
    mmsearch(stack["env"], "stack", "restart", victim)  # two workers again for the next tests


def test_redis_restarted_between_two_tasks_and_postgres_during_one_lose_nothing(stack, airflow_api, form_run):
    """One run meets both: Redis (the broker) restarted between validate and the next task, then
    PostgreSQL (Airflow's metadata, MLflow's store) restarted while transform runs."""
    run_id = trigger(airflow_api, {**FAST, "force_retrain": True})
    wait_for_task(airflow_api, run_id, "data.validate", {"success"})
    mmsearch(stack["env"], "stack", "restart", "redis")
    wait_for_task(airflow_api, run_id, "model.transform", {"running"})
    before = mmsearch(stack["env"], "stack", "status", "--json")["pids"]["postgres"]
    restarted = mmsearch(stack["env"], "stack", "restart", "postgres")
    assert restarted["pid"] != before
    finished = wait_for_run(airflow_api, run_id, timeout=900)
    assert finished["state"] == "success", failure_report(airflow_api, run_id)
    states = task_states(airflow_api, run_id)
    assert states["configure"] == "success" and states["model.register"] == "success"  # rows from before and after
    assert len(versions_of(stack["status"], run_id)) == 1


def test_wrong_mlflow_credentials_fail_register_with_one_line_and_promote_nothing(stack, airflow_api, form_run):
    status = stack["status"]
    user, password = mlflow_credentials(status)
    champion = champion_version(status)
    run_id = trigger(airflow_api, {**FAST, "force_retrain": True})
    # the moment evaluate, the last task before register to use MLflow, is done: register's first
    # MLflow call comes seconds later (Celery, then the ML environment's start)
    wait_for_task(airflow_api, run_id, "model.evaluate", {"success"}, poll=0.2)
    rotated = password + "-rotated"
    with mlflow_client(status) as mlflow:  # the admin changes the password the workers still use
        change = {"username": user, "password": rotated, "current_password": password}
        mlflow.patch("/users/update-password", json=change).raise_for_status()
    try:
        finished = wait_for_run(airflow_api, run_id, timeout=600)
        assert finished["state"] == "failed"
        register = airflow_api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/model.register").json()
        assert register["state"] == "failed" and register["try_number"] == 1  # refused: not retried
        log = task_log(airflow_api, run_id, "model.register")
        refusals = re.findall(
            r"CredentialsError: (MLflow at \S+ refused the credentials of user admin \(HTTP 401\).*)", log
        )
        assert refusals and "nothing was registered or promoted" in refusals[0], log[-3000:]
        assert champion_version(status, (user, rotated)) == champion
        assert versions_of(status, run_id, (user, rotated)) == []
    finally:
        with mlflow_as(status, (user, rotated)) as mlflow:
            change = {"username": user, "password": password, "current_password": rotated}
            mlflow.patch("/users/update-password", json=change).raise_for_status()
