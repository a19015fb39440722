"""What the stack suites share: the README's server commands run as pasted, a running stack
stopped and checked at the end, clients of its APIs, and the Trigger form driven as a person
drives it."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from mmsearch.stack.clients import airflow_api as logged_in_airflow_api
from tests import readme
from tests.helpers import REPO_ROOT

DAG_ID = "mmsearch_training"
MODEL = "mmsearch-esci"
ARTIFACTS = Path(os.environ.get("MMSEARCH_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
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


def run_mmsearch(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "mmsearch"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def mmsearch(env: dict, *args: str, timeout: float = 300) -> dict:
    result = run_mmsearch(env, *args, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def make(env: dict, starting: str) -> str:
    """The README's servers command that starts with `starting`, pasted; what it prints for a person."""
    result = readme.run(readme.command("servers", starting), env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@contextlib.contextmanager
def running_stack(env: dict, up: str = "make up  ", request=None):
    """The README's `make up` (timed), and at the end its `make down`: every process the stack
    started, and every child they had, must be gone. When a test of the module failed (`request`:
    the module fixture's), the stack's logs and its task logs are kept under test-artifacts/."""
    failed_before = request.session.testsfailed if request else 0
    started = time.monotonic()
    started_text = make(env, up)
    startup_seconds = round(time.monotonic() - started, 1)
    status = mmsearch(env, "stack", "status", "--json") | {"startup_seconds": startup_seconds}
    try:
        assert re.search(r"^component +pid +memory", started_text, re.M), started_text  # the status table
        assert "\nnext         make serve" in started_text, started_text
        yield {"env": env, "status": status}
    finally:
        if request is not None and request.session.testsfailed > failed_before:
            keep_logs(Path(env["MMSEARCH_HOME"]), request.module.__name__.rsplit(".", 1)[-1])
        started_pids = set()
        for pid in mmsearch(env, "stack", "status", "--json")["pids"].values():
            with contextlib.suppress(psutil.NoSuchProcess):
                started_pids |= {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
        stopped = make(env, "make down")
        # by name: a component the keeper restarted (the fault tests kill some) has a new PID
        assert all(f"{name} (" in stopped for name in status["pids"]), stopped
        leftovers = [pid for pid in started_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert not leftovers, f"processes still running after stack down: {leftovers}"
        shutil.rmtree(Path(env["MMSEARCH_HOME"]).parent, ignore_errors=True)


def keep_logs(home: Path, name: str) -> Path:
    """The stack's process logs and Airflow's task logs, copied to test-artifacts/logs-<name>/."""
    kept = ARTIFACTS / f"logs-{name}"
    shutil.rmtree(kept, ignore_errors=True)
    for source, target in ((home / "stack" / "logs", "stack"), (home / "airflow" / "logs", "airflow")):
        if source.is_dir():
            shutil.copytree(source, kept / target)
    print(f"the stack's logs are kept in {kept}")
    return kept


def failure_report(api: httpx.Client, run_id: str, dag_id: str = DAG_ID, lines: int = 40) -> str:
    """The run's task states and the end of every failed try's log: what a failed stack test prints."""
    listed = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").raise_for_status().json()["task_instances"]
    report = [f"run {run_id}: " + ", ".join(f"{ti['task_id']}[{ti['map_index']}] {ti['state']}" for ti in listed)]
    for ti in listed:
        if ti["state"] not in ("failed", "up_for_retry"):
            continue
        for attempt in range(1, ti["try_number"] + 1):
            url = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{attempt}"
            found = api.get(url, params={"map_index": ti["map_index"]}, headers={"Accept": "application/json"})
            content = found.json().get("content", []) if found.is_success else [found.text]
            text = [str(line.get("event", line)) if isinstance(line, dict) else str(line) for line in content]
            report.append(f"--- {ti['task_id']}[{ti['map_index']}] try {attempt}, the log's last {lines} lines:")
            report += text[-lines:]
    return "\n".join(report)


def mlflow_credentials(status: dict) -> tuple[str, str]:
    return "admin", json.loads(Path(status["secrets_file"]).read_text())["mlflow_admin_password"]


def mlflow_client(status: dict) -> httpx.Client:
    """MLflow's REST API with the stack's admin credentials (the server refuses anonymous requests)."""
    return httpx.Client(base_url=f"{status['mlflow_url']}/api/2.0/mlflow", timeout=30, auth=mlflow_credentials(status))


def api_client(status: dict) -> httpx.Client:
    """Airflow's REST API, logged in as the stack's admin (its credentials kept on the client)."""
    client = logged_in_airflow_api(status)
    password = json.loads(Path(status["admin_password_file"]).read_text())[status["admin_user"]]
    client.credentials = (status["admin_user"], password)
    return client


def wait_for_run(api: httpx.Client, run_id: str, timeout: float = 600, dag_id: str = DAG_ID) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/dags/{dag_id}/dagRuns/{run_id}").raise_for_status().json()
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(3)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s")


def task_states(api: httpx.Client, run_id: str) -> dict:
    listed = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").raise_for_status().json()
    return {ti["task_id"]: ti["state"] for ti in listed["task_instances"]}


def task_log(api: httpx.Client, run_id: str, task_id: str, dag_id: str = DAG_ID) -> str:
    response = (
        api.get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1", headers={"Accept": "application/json"}
        )
        .raise_for_status()
        .json()
    )
    return "\n".join(
        str(line.get("event", line)) if isinstance(line, dict) else str(line) for line in response["content"]
    )


def trigger_from_the_form(
    page, url: str, api: httpx.Client, edits: dict, screenshot: str, shows: dict | None = None
) -> dict:
    """On the DAG's page, open its Trigger form, edit `edits` (param name: text, or true/false for
    a switch), check that each section of `shows` shows its text, and press Trigger; return the
    run it started, found through the REST API."""
    from playwright.sync_api import expect

    page.goto(f"{url}/dags/{DAG_ID}")
    before = {r["dag_run_id"] for r in api.get(f"/dags/{DAG_ID}/dagRuns").raise_for_status().json()["dag_runs"]}
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()
    for name, text in edits.items():
        field = dialog.get_by_label(re.compile(rf"^{name}\b"))  # the label: the param's name (and a * if required)
        if not field.is_visible():  # its section is closed (one opens at a time)
            dialog.get_by_role("button", name=SECTION_OF[name], exact=True).click()
        if isinstance(text, bool):  # a switch: its input is hidden, a person clicks the switch around it
            if field.is_checked() != text:
                field.locator("xpath=..").click()
            expect(field).to_be_checked(checked=text)
            continue
        field.fill(text)
        if field.get_attribute("role") == "combobox":  # a setting with choices: the typed one, picked
            field.press("Enter")
        field.blur()
    for section, text in (shows or {}).items():
        if not dialog.get_by_text(text).is_visible():
            dialog.get_by_role("button", name=section, exact=True).click()
        expect(dialog.get_by_text(text)).to_be_visible()
    submit = dialog.get_by_role("button", name="Trigger", exact=True)
    expect(submit).to_be_enabled()  # nothing required is missing, nothing is out of range
    page.screenshot(path=str(ARTIFACTS / screenshot))
    submit.click()
    expect(page.get_by_text("Dag Run Triggered").first).to_be_visible(timeout=30_000)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = api.get(f"/dags/{DAG_ID}/dagRuns").raise_for_status().json()["dag_runs"]
        new = [r for r in runs if r["dag_run_id"] not in before]
        if new:
            return new[0]
        time.sleep(1)
    raise AssertionError("the Trigger form started no run")


SECTION_OF = {
    "epochs": "Training",
    "steps_per_epoch": "Training",
    "train_query_baseline": "Training",
    "promotion": "Registry",
}
