"""`make up` / `make down`: the local server stack, no Docker.

Airflow 3 as separate processes (api-server, scheduler, dag-processor, triggerer;
LocalExecutor on SQLite) from the Airflow environment, and an MLflow tracking server
(SQLite backend, artifacts served by the server) from the ML environment. Each runs in
its own process group; its PID and start time go to `$MMSEARCH_HOME/stack/pids.json`,
and `down` stops exactly those processes by PID (a reused PID is never signalled).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmsearch import config as C
from mmsearch.io import read_json, write_json

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTHY = "healthy"


class StackError(RuntimeError):
    """The stack could not start (port taken, a process died, health never came)."""


@dataclass(frozen=True)
class StackSettings:
    host: str = "127.0.0.1"
    airflow_port: int = 8080
    mlflow_port: int = 5000
    admin_user: str = "admin"
    # A fixed admin password (MMSEARCH_ADMIN_PASSWORD); empty: Airflow generates one.
    admin_password: str = field(default="", repr=False)

    @classmethod
    def from_env(cls) -> StackSettings:
        env = os.environ
        return cls(
            airflow_port=int(env.get("MMSEARCH_AIRFLOW_PORT", cls.airflow_port)),
            mlflow_port=int(env.get("MMSEARCH_MLFLOW_PORT", cls.mlflow_port)),
            admin_password=env.get("MMSEARCH_ADMIN_PASSWORD", ""),
        )

    @property
    def airflow_url(self) -> str:
        return f"http://{self.host}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"


def stack_dir() -> Path:
    return C.mmsearch_home() / "stack"


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME", C.mmsearch_home() / "airflow")).resolve()


def password_file() -> Path:
    return airflow_home() / "simple_auth_manager_passwords.json.generated"


def admin_password(settings: StackSettings) -> str:
    return read_json(password_file())[settings.admin_user]


def _secrets() -> dict:
    """The JWT and session secrets every Airflow component must share; made once, mode 0600."""
    path = stack_dir() / "secrets.json"
    if not path.exists():
        write_json(path, {"jwt_secret": secrets.token_urlsafe(32), "secret_key": secrets.token_urlsafe(32)})
        path.chmod(0o600)
    return read_json(path)


def stack_env(settings: StackSettings) -> dict:
    """The environment of every process in the stack; the DAG's tasks inherit it."""
    keys = _secrets()
    env = dict(os.environ)
    env.update(
        {
            "MMSEARCH_HOME": str(C.mmsearch_home()),
            "AIRFLOW_HOME": str(airflow_home()),
            "AIRFLOW__CORE__DAGS_FOLDER": os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", str(C.REPO_ROOT / "dags")),
            "AIRFLOW__CORE__PLUGINS_FOLDER": os.environ.get(
                "AIRFLOW__CORE__PLUGINS_FOLDER", str(C.REPO_ROOT / "plugins")
            ),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # two cores: two task slots in all; the DAG is a chain, so one runs at a time anyway
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.admin_user}:admin",
            "AIRFLOW__API__BASE_URL": settings.airflow_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": keys["secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "MLFLOW_TRACKING_URI": settings.mlflow_url,
            # for mmsearch_maintenance's `airflow db clean`: Airflow 3 scrubs the URL from tasks
            "MMSEARCH_AIRFLOW_DB_URL": f"sqlite:///{airflow_home() / 'airflow.db'}",
            # MLflow's job runner serves GenAI evaluation jobs, which mmsearch has none of: ~250 MB saved
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
    )
    return env


def _commands(settings: StackSettings) -> dict[str, list[str]]:
    airflow = str(Path(sys.executable).parent / "airflow")
    mlflow_dir = C.mmsearch_home() / "mlflow-server"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    commands = {
        "mlflow": [
            os.environ.get("MMSEARCH_ML_PYTHON", str(C.REPO_ROOT / ".venvs" / "ml" / "bin" / "python")),
            "-m",
            "mlflow",
            "server",
            "--host",
            settings.host,
            "--port",
            str(settings.mlflow_port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(mlflow_dir / "artifacts"),
        ]
    }
    commands["api-server"] = [airflow, "api-server", "--host", settings.host, "--port", str(settings.airflow_port)]
    for component in AIRFLOW_COMPONENTS[1:]:
        commands[component] = [airflow, component]
    return commands


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _get_json(url: str, timeout: float = 3.0) -> dict | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body.strip().startswith(b"{") else {"status": body.decode().strip()}
    except (OSError, ValueError):
        return None


def health(settings: StackSettings) -> dict:
    """Each component's state: MLflow's /health, and Airflow's /api/v2/monitor/health."""
    states = {"mlflow": HEALTHY if _get_json(f"{settings.mlflow_url}/health") else "down"}
    airflow = _get_json(f"{settings.airflow_url}/api/v2/monitor/health")
    states["api-server"] = HEALTHY if airflow else "down"
    for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        states[component] = (airflow or {}).get(component, {}).get("status") or "down"
    return states


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _running(pids: dict) -> dict:
    """The recorded processes still alive with the same start time (so not a reused PID)."""
    import psutil

    alive = {}
    for name, entry in pids.items():
        try:
            if psutil.Process(entry["pid"]).create_time() == entry["create_time"]:
                alive[name] = entry
        except psutil.NoSuchProcess:
            pass
    return alive


def _recorded() -> dict:
    path = stack_dir() / "pids.json"
    return read_json(path) if path.exists() else {}


def up(settings: StackSettings | None = None, timeout: float = 240.0) -> dict:
    import psutil

    settings = settings or StackSettings.from_env()
    if _running(_recorded()):
        raise StackError(f"the stack is already running (PIDs in {stack_dir() / 'pids.json'}); `make down` first")
    for port in (settings.airflow_port, settings.mlflow_port):
        if not _port_free(settings.host, port):
            raise StackError(
                f"port {port} on {settings.host} is in use; "
                "set MMSEARCH_AIRFLOW_PORT / MMSEARCH_MLFLOW_PORT to free ports"
            )
    logs = stack_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = stack_env(settings)
    airflow_home().mkdir(parents=True, exist_ok=True)
    migrate = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True
    )
    if migrate.returncode != 0:
        raise StackError(f"airflow db migrate failed:\n{migrate.stderr[-2000:]}")
    if settings.admin_password:
        write_json(password_file(), {settings.admin_user: settings.admin_password})
        password_file().chmod(0o600)

    pids: dict = {}
    for name, command in _commands(settings).items():
        with open(logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        pids[name] = {
            "pid": process.pid,
            "create_time": psutil.Process(process.pid).create_time(),
            "log": str(logs / f"{name}.log"),
        }
        write_json(stack_dir() / "pids.json", pids)  # after each start: `down` can stop a partial stack

    deadline = time.monotonic() + timeout
    while True:
        states = health(settings)
        dead = set(pids) - set(_running(pids))
        if dead:
            down()
            name = sorted(dead)[0]
            raise StackError(
                f"{name} exited during start-up; its log ({pids[name]['log']}) ends:\n{_tail(Path(pids[name]['log']))}"
            )
        if all(state == HEALTHY for state in states.values()):
            break
        if time.monotonic() > deadline:
            down()
            raise StackError(f"not healthy after {timeout:.0f} s: {states}; logs in {logs}")
        time.sleep(2)
    # the CLI sends this to stderr: stdout carries only the JSON status
    print(
        f"Airflow UI   {settings.airflow_url}  (user {settings.admin_user}, "
        f"password {admin_password(settings)}, from {password_file()})\n"
        f"MLflow UI    {settings.mlflow_url}\nlogs         {logs}\nstop with    make down"
    )
    return status(settings)


def memory_mb(running: dict) -> dict:
    """Resident memory of each running component's process tree, in MB."""
    import psutil

    usage = {}
    for name, entry in running.items():
        root = psutil.Process(entry["pid"])
        total = 0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        usage[name] = round(total / 2**20)
    return usage


def status(settings: StackSettings | None = None) -> dict:
    settings = settings or StackSettings.from_env()
    running = _running(_recorded())
    memory = memory_mb(running)
    return {
        "airflow_url": settings.airflow_url,
        "mlflow_url": settings.mlflow_url,
        "admin_user": settings.admin_user,
        "admin_password_file": str(password_file()),
        "health": health(settings),
        "pids": {name: entry["pid"] for name, entry in running.items()},
        "memory_mb": {**memory, "total": sum(memory.values())},
        "logs": str(stack_dir() / "logs"),
    }


def down(grace_seconds: float = 30.0) -> dict:
    """SIGTERM each recorded process group, SIGKILL what is left after the grace period."""
    import psutil

    pids = _running(_recorded())
    for entry in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry["pid"], signal.SIGTERM)
    processes = []
    for entry in pids.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            processes.append(psutil.Process(entry["pid"]))
    _, alive = psutil.wait_procs(processes, timeout=grace_seconds)
    for entry in pids.values():  # the whole group: task processes a leader left behind too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry["pid"], signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)  # SIGKILL is sent, not done: return once they are gone
    (stack_dir() / "pids.json").unlink(missing_ok=True)
    return {
        "stopped": {name: entry["pid"] for name, entry in pids.items()},
        "killed_after_grace": [process.pid for process in alive],
    }
