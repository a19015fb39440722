"""The UI path, for real, as a person takes it: `mmsearch stack up` (what `make up` runs) starts
Airflow 3 and an MLflow server; in headless Chromium a user logs in, opens the DAG's Trigger
form and presses Trigger without editing anything (the form's defaults must trigger; the
production suite edits fields in the same form). The run is followed through Airflow's REST
API, the model through MLflow's; every process is stopped by PID at the end. Screenshots and
figures go to test-artifacts/ for a person to look at."""

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmsearch.config import DEFAULT_CANDIDATES
from tests import readme
from tests.helpers import isolated_env, stack_env
from tests.stack.support import (
    ARTIFACTS,
    DAG_ID,
    MODEL,
    failure_report,
    mlflow_client,
    mmsearch,
    run_mmsearch,
    running_stack,
    task_log,
    trigger_from_the_form,
    wait_for_run,
)

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(900)]


def test_status_of_a_stopped_stack_is_an_answer_not_a_failure(tmp_path):
    env = isolated_env(tmp_path / "home")
    result = readme.run(readme.command("servers", "make status"), env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stopped: the stack is not running" in result.stdout and "`make up` starts it" in result.stdout
    scripted = run_mmsearch(env, "stack", "status", "--json")  # what a script checks
    assert scripted.returncode == 3 and "error: the stack is not running" in scripted.stderr


@pytest.fixture(scope="module")
def stack(request):
    # only the run this test triggers: unpausing would otherwise also start the latest nightly run
    env = stack_env("stack", AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False")
    with running_stack(env, request=request) as running:
        yield running


@pytest.fixture(scope="module")
def default_run(stack, airflow_api, page):
    """Trigger pressed without editing anything: the form's defaults start the run."""
    started = time.monotonic()
    url = stack["status"]["airflow_url"]
    # the allowed range under a number field: its box shows none
    steps = {"Training": "Training steps per epoch. Allowed: ≥ 1."}
    run = trigger_from_the_form(page, url, airflow_api, {}, "airflow-ui-trigger-form-defaults.png", shows=steps)
    finished = wait_for_run(airflow_api, run["dag_run_id"])
    assert finished["state"] == "success", failure_report(airflow_api, run["dag_run_id"])
    return {**finished, "trigger_to_registered_seconds": round(time.monotonic() - started, 1)}


def test_serve_without_a_champion_exits_at_once_saying_why(stack):
    # first in the module: nothing is registered yet
    started = time.monotonic()
    result = readme.run(readme.command("servers", "make serve "), stack["env"], timeout=60)
    seconds = time.monotonic() - started
    # at once: not after serving's 180 s wait for a model that cannot come (the bound leaves room
    # for the other suites sharing the cores)
    assert result.returncode != 0 and seconds < 20, (seconds, result.stderr[-2000:])
    assert "nothing to serve: no model is registered as mmsearch-esci yet. Next: trigger" in result.stderr
    assert "serve" not in mmsearch(stack["env"], "stack", "status", "--json")["pids"]  # nothing was started


def test_status_is_a_table_of_the_running_processes(stack):
    result = readme.run(readme.command("servers", "make status"), stack["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    header, *rows = result.stdout.splitlines()[1:]  # after the line make echoes
    assert header.split() == ["component", "pid", "memory", "health", "listening"]
    by_name = {row.split()[0]: row for row in rows}
    for name, pid in stack["status"]["pids"].items():
        assert str(pid) in by_name[name]
    assert "healthy" in by_name["mlflow"] and "healthy" in by_name["scheduler"]
    assert f"Airflow UI   {stack['status']['airflow_url']}" in result.stdout


def test_the_form_triggers_with_its_defaults(default_run):
    from mmsearch.config import RunConfig, params_by_section
    from mmsearch.config_schema import param_default

    conf = default_run["conf"]
    assert conf["epochs"] == 50 and conf["feature_set"] == "query_product"
    assert conf == {field.name: param_default(field) for field in params_by_section()}
    assert conf["raw_data_dir"] is None and conf["dvc_repo"] is None  # optional, left empty: not required
    assert RunConfig.from_mapping(conf) == RunConfig()  # the defaults are the configuration's own
    assert default_run["run_type"] == "manual"


def test_two_candidates_train_at_once_under_the_local_executor(airflow_api, default_run):
    listed = airflow_api.get(f"/dags/{DAG_ID}/dagRuns/{default_run['dag_run_id']}/taskInstances").raise_for_status()
    trains = [ti for ti in listed.json()["task_instances"] if ti["task_id"] == "model.train"]
    assert sorted(ti["map_index"] for ti in trains) == [0, 1]
    (start_a, end_a), (start_b, end_b) = sorted((ti["start_date"], ti["end_date"]) for ti in trains)
    assert start_b < end_a, trains  # the second started before the first ended


def test_the_triggered_run_registers_its_model_in_the_mlflow_server(stack, default_run):
    mlflow = mlflow_client(stack["status"])
    versions = mlflow.get("/model-versions/search", params={"filter": f"name = '{MODEL}'"}).raise_for_status().json()
    by_run = {
        {t["key"]: t["value"] for t in v.get("tags", [])}.get("airflow_run_id"): v for v in versions["model_versions"]
    }
    ours = by_run[default_run["dag_run_id"]]
    assert ours["status"] == "READY"
    assert re.search(r"^baseline_clip +0\.\d{4} \[", ours["description"], re.M)  # the model card's table
    model = mlflow.get("/registered-models/get", params={"name": MODEL}).raise_for_status().json()["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model["aliases"]}
    assert aliases["challenger"] == ours["version"]  # the newest version

    def artifacts(run_id: str, path: str = "") -> set:
        listed = mlflow.get("/artifacts/list", params={"run_id": run_id, "path": path})
        return {f["path"] for f in listed.raise_for_status().json().get("files", [])}

    assert "training_curves.png" in artifacts(ours["run_id"])
    assert "evaluation/reliability_model.png" in artifacts(ours["run_id"], "evaluation")


def test_register_task_log_shows_the_run_summary(airflow_api, default_run):
    log = task_log(airflow_api, default_run["dag_run_id"], "model.register")
    assert re.search(r"registered mmsearch-esci v\d+, aliases challenger(, champion)?: ", log), log[-3000:]
    # each figure with its 95 % interval: accuracy, macro_f1, ndcg
    assert re.search(r"^model\s+(0\.\d{4} \[0\.\d{3}, [01]\.\d{3}\]\s*){3}$", log, re.M), log[-3000:]
    assert re.search(r"^baseline_clip\s+0\.\d{4}", log, re.M), log[-3000:]


def test_airflow_ui_shows_the_run_and_the_mapped_candidates(stack, page, default_run):
    from playwright.sync_api import expect

    page.goto(f"{stack['status']['airflow_url']}/dags/{DAG_ID}/runs")
    row = page.get_by_role("row").filter(has_text=default_run["dag_run_id"])
    expect(row).to_have_count(1, timeout=30_000)
    expect(row).to_contain_text("Success")
    page.screenshot(path=str(ARTIFACTS / "airflow-ui-dag-runs.png"))
    page.goto(
        f"{stack['status']['airflow_url']}/dags/{DAG_ID}/runs/{default_run['dag_run_id']}/tasks/model.train/mapped"
    )
    candidates = len(DEFAULT_CANDIDATES)
    expect(page.get_by_role("row").filter(has_text="Success")).to_have_count(candidates, timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "airflow-ui-mapped-candidates.png"))
    page.goto(f"{stack['status']['mlflow_url']}/#/models/{MODEL}")
    expect(page.get_by_text("Version 1").first).to_be_visible(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "mlflow-ui-registered-model.png"))
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
    assert mmsearch(stack["env"], "stack", "status", "--json")["pids"] == stack["status"]["pids"]  # nothing replaced


def test_stack_figures_are_recorded(stack, default_run):
    """Memory of the running stack after a run, and time from trigger to registered model."""
    status = mmsearch(stack["env"], "stack", "status", "--json")
    assert set(status["health"].values()) == {"healthy"}
    figures = {
        "startup_seconds": stack["status"]["startup_seconds"],
        "trigger_to_registered_seconds": default_run["trigger_to_registered_seconds"],
        "memory_mb_after_run": status["memory_mb"],
        "memory_mb_at_start": stack["status"]["memory_mb"],
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "stack-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    assert status["memory_mb"]["total"] > 0


def test_the_readme_triggers_a_run_through_the_rest_api(stack, airflow_api):
    """The README's REST block, pasted: it signs in with the generated password, switches the DAG
    on and triggers a run with its conf. Last in the module: the run it starts goes with the stack."""
    result = readme.run(readme.block("rest-api"), stack["env"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = airflow_api.get(f"/dags/{DAG_ID}/dagRuns").raise_for_status().json()["dag_runs"]
    assert {"epochs": 10} in [run["conf"] for run in runs], runs


def test_stack_up_refuses_a_taken_port_and_starts_nothing():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**stack_env("taken-port"), "MMSEARCH_AIRFLOW_PORT": str(port)}
        result = subprocess.run(
            [str(Path(sys.executable).parent / "mmsearch"), "stack", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 3
    assert result.stderr.strip() == (
        f"mmsearch stack: error: port {port} on 127.0.0.1 is in use; set MMSEARCH_AIRFLOW_PORT to a free port"
    )
    assert not (Path(env["MMSEARCH_HOME"]) / "stack" / "pids.json").exists()
    shutil.rmtree(Path(env["MMSEARCH_HOME"]).parent)
