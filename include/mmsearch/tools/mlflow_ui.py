"""`make mlflow-ui`: MLflow's UI on the store `make run` wrote to (MMSEARCH_HOME's, or
MLFLOW_TRACKING_URI's), on a free port of 127.0.0.1, until Ctrl-C. It prints the address of the
experiment's training runs: the DAG runs' parent runs, each with its candidates nested under it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from mmsearch import config, paths
from mmsearch.stack.health import get_json
from mmsearch.stack.settings import StackError, free_port

# MLflow's server imports for seconds, and for more than a minute on a loaded machine (CI's, with
# four test suites on two cores)
START_TIMEOUT = 180.0


def _store(uri: str) -> None:
    """The embedded default store must exist: the UI would show an empty new one."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        raise StackError(f"no MLflow store at {path} yet: `make run` writes it")


def _experiment_id(url: str, name: str, timeout: float) -> str:
    """Wait for the server, then ask it for the experiment's id."""
    import httpx

    deadline = time.monotonic() + timeout
    while not get_json(f"{url}/health"):
        if time.monotonic() > deadline:
            raise StackError(f"MLflow's UI did not answer on {url} in {timeout:.0f} s")
        time.sleep(0.5)
    found = httpx.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}, timeout=10)
    if not found.is_success:
        raise StackError(f"the store has no experiment {name!r} yet: `make run` creates it")
    return found.json()["experiment"]["experiment_id"]


def start(port: int | None = None, timeout: float = START_TIMEOUT) -> tuple[subprocess.Popen, str]:
    """The UI's server process and the address of the experiment's runs."""
    uri = paths.mlflow_tracking_uri()
    _store(uri)
    port = port or free_port()
    command = [paths.ml_python(), "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        command += ["--default-artifact-root", paths.mlflow_artifact_root()]
    log = paths.mmsearch_home() / "logs" / "mlflow-ui.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    # the server's imports take 20-40 s: say so at once, not after a silence
    print(f"starting MLflow's UI on {url} (20-40 s; its log: {log})", flush=True)
    try:
        experiment = _experiment_id(url, config.RunConfig().experiment_name, timeout)
    except StackError:
        stop(server)
        raise
    return server, runs_address(url, experiment)


def runs_address(url: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's model-training view: its UI otherwise opens the GenAI view
    (traces, evaluation runs) until a person switches, and remembers the switch per browser."""
    return f"{url}/#/experiments/{quote(experiment_id)}/runs?workflowType=machine_learning"


def stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main(port: int | None = None) -> str:
    server, runs_url = start(port)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped by PID as by Ctrl-C: the server goes too
    print(
        f"MLflow UI    {runs_url}\n"
        "             each DAG run is a parent run (its test metrics, and a note linking the chosen\n"
        "             candidate); expand it for candidate-N: training curves, validation, evaluation/\n"
        "             figures under Artifacts. Models: the registry (aliases champion, challenger).\n"
        "stop with    Ctrl-C",
        flush=True,
    )
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(server)
    return "MLflow UI stopped"
