"""The UI path, for real: `mmsearch stack up` (what `make up` runs) starts Airflow 3 and an
MLflow server; the DAG is unpaused and triggered with a config through the REST API (what
the UI's trigger button calls), its model is checked through MLflow's REST API, and the
run is found on the DAG's page in headless Chromium, logged in. Every process is stopped
by PID at the end. Screenshots and figures go to test-artifacts/."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from mmsearch.tools.sample_data import SampleSpec
from tests.helpers import REPO_ROOT, isolated_env, make_dvc_repo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

DAG_ID = "mmsearch_training"
MODEL = "mmsearch-esci"
ARTIFACTS = Path(os.environ.get("MMSEARCH_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
SAMPLE = SampleSpec(queries=120, products=700, mean_judgements=16, topics=12, intents=3, seed=5)
CHROMIUM = "/usr/bin/chromium"
# Chromium on a closed network: no background connections, no sandbox as root (as in CI).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mmsearch(env: dict, *args: str, timeout: float = 300) -> dict:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mmsearch"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    env = isolated_env(
        root / "home",
        MMSEARCH_AIRFLOW_PORT=str(free_port()),
        MMSEARCH_MLFLOW_PORT=str(free_port()),
        # only the run this test triggers: unpausing would otherwise also start the latest nightly run
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
    )
    repo = make_dvc_repo(root, SAMPLE)
    started = time.monotonic()
    status = mmsearch(env, "stack", "up")
    status["startup_seconds"] = round(time.monotonic() - started, 1)
    try:
        yield {"env": env, "repo": repo, "status": status}
    finally:
        stopped = mmsearch(env, "stack", "down")
        assert set(stopped["stopped"]) == set(status["pids"])
        leftovers = [pid for pid in status["pids"].values() if psutil.pid_exists(pid)]
        assert not leftovers, f"processes still running after stack down: {leftovers}"


@pytest.fixture(scope="module")
def airflow_api(stack):
    status = stack["status"]
    password = json.loads(Path(status["admin_password_file"]).read_text())[status["admin_user"]]
    token = httpx.post(
        f"{status['airflow_url']}/auth/token", json={"username": status["admin_user"], "password": password}
    ).raise_for_status()
    client = httpx.Client(
        base_url=f"{status['airflow_url']}/api/v2",
        timeout=30,
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
    )
    client.credentials = (status["admin_user"], password)
    yield client
    client.close()


def wait_for_run(api: httpx.Client, run_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").raise_for_status().json()
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(3)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s")


def task_states(api: httpx.Client, run_id: str) -> dict:
    listed = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").raise_for_status().json()
    return {ti["task_id"]: ti["state"] for ti in listed["task_instances"]}


def task_log(api: httpx.Client, run_id: str, task_id: str) -> str:
    response = (
        api.get(
            f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1", headers={"Accept": "application/json"}
        )
        .raise_for_status()
        .json()
    )
    return "\n".join(
        str(line.get("event", line)) if isinstance(line, dict) else str(line) for line in response["content"]
    )


@pytest.fixture(scope="module")
def triggered_run(stack, airflow_api):
    """Unpause, trigger with a config, wait: what a user does from the UI."""
    api = airflow_api
    dag = api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status().json()
    assert dag["is_paused"] is False
    conf = {"dvc_repo": str(stack["repo"]), "epochs": 4, "steps_per_epoch": 40}
    started = time.monotonic()
    run = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf}).raise_for_status().json()
    assert run["conf"] == conf
    finished = wait_for_run(api, run["dag_run_id"])
    seconds = round(time.monotonic() - started, 1)
    assert finished["state"] == "success", task_states(api, run["dag_run_id"])
    return {"run_id": run["dag_run_id"], "trigger_to_registered_seconds": seconds}


def test_triggered_run_registers_its_model_in_the_mlflow_server(stack, triggered_run):
    mlflow = httpx.Client(base_url=f"{stack['status']['mlflow_url']}/api/2.0/mlflow", timeout=30)
    versions = mlflow.get("/model-versions/search", params={"filter": f"name = '{MODEL}'"}).raise_for_status().json()
    ours = [
        v
        for v in versions["model_versions"]
        if {t["key"]: t["value"] for t in v.get("tags", [])}.get("airflow_run_id") == triggered_run["run_id"]
    ]
    assert len(ours) == 1 and ours[0]["status"] == "READY"
    model = mlflow.get("/registered-models/get", params={"name": MODEL}).raise_for_status().json()["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model["aliases"]}
    assert aliases == {"champion": ours[0]["version"], "challenger": ours[0]["version"]}  # the first version

    # the figures people look at, served by the tracking server
    def artifacts(path: str = "") -> set:
        listed = mlflow.get("/artifacts/list", params={"run_id": ours[0]["run_id"], "path": path})
        return {f["path"] for f in listed.raise_for_status().json().get("files", [])}

    assert "training_curves.png" in artifacts()
    assert "evaluation/confusion_model.png" in artifacts("evaluation")


def test_register_task_log_shows_the_run_summary(airflow_api, triggered_run):
    log = task_log(airflow_api, triggered_run["run_id"], "model.register")
    assert re.search(r"registered mmsearch-esci v\d+, aliases challenger, champion: ", log), log[-3000:]
    assert re.search(r"^model\s+0\.\d{4}\s+0\.\d{4}\s+0\.\d{4}$", log, re.M), log[-3000:]


def test_airflow_ui_lists_the_successful_run(stack, airflow_api, triggered_run):
    from playwright.sync_api import expect, sync_playwright

    status = stack["status"]
    user, password = airflow_api.credentials
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{status['airflow_url']}/dags/{DAG_ID}/runs")
            page.get_by_label(re.compile("username", re.I)).fill(user)
            page.get_by_label(re.compile("password", re.I)).fill(password)
            page.get_by_role("button", name=re.compile("sign in", re.I)).click()
            page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/runs"))
            row = page.get_by_role("row").filter(has_text=triggered_run["run_id"])
            expect(row).to_have_count(1, timeout=30_000)
            expect(row).to_contain_text("Success")
            expect(row).to_contain_text("Manual")
            page.screenshot(path=str(ARTIFACTS / "airflow-ui-dag-runs.png"))

            page.goto(f"{status['mlflow_url']}/#/models/{MODEL}")
            expect(page.get_by_text("Version 1").first).to_be_visible(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "mlflow-ui-registered-model.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "airflow-ui-dag-runs.png").stat().st_size > 10_000


def test_a_second_stack_up_refuses_while_one_runs(stack):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mmsearch"), "stack", "up"],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3
    assert "the stack is already running" in result.stderr and "make down" in result.stderr
    assert mmsearch(stack["env"], "stack", "status")["pids"] == stack["status"]["pids"]  # nothing replaced


def test_stack_figures_are_recorded(stack, triggered_run):
    """Memory of the running stack after a run, and time from trigger to registered model."""
    status = mmsearch(stack["env"], "stack", "status")
    assert set(status["health"].values()) == {"healthy"}
    figures = {
        "startup_seconds": stack["status"]["startup_seconds"],
        "trigger_to_registered_seconds": triggered_run["trigger_to_registered_seconds"],
        "memory_mb_after_run": status["memory_mb"],
        "memory_mb_at_start": stack["status"]["memory_mb"],
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "stack-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    assert status["memory_mb"]["total"] > 0


def test_stack_up_refuses_a_taken_port_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = isolated_env(tmp_path / "home", MMSEARCH_AIRFLOW_PORT=str(port), MMSEARCH_MLFLOW_PORT=str(free_port()))
        result = subprocess.run(
            [str(Path(sys.executable).parent / "mmsearch"), "stack", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 3
    assert result.stderr.strip() == (
        f"mmsearch stack: error: port {port} on 127.0.0.1 is in use; "
        "set MMSEARCH_AIRFLOW_PORT / MMSEARCH_MLFLOW_PORT to free ports"
    )
    assert not (tmp_path / "home" / "stack" / "pids.json").exists()
