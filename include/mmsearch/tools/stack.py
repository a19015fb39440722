"""`make up` / `make down` / `make serve`: the local server stack, no Docker.

PostgreSQL (Airflow's metadata, MLflow's tracking store and users) and, with the Celery
executor, Redis; Airflow 3 as separate processes (api-server, scheduler, dag-processor,
triggerer, and N `airflow celery worker`s) from the Airflow environment; an MLflow tracking
server behind MLflow's basic-auth app, and `mlflow models serve` of the champion, from the ML
environment. Every port is on 127.0.0.1. Each process runs in its own process group; its PID
and start time go to `$MMSEARCH_HOME/stack/pids.json`, and `down` stops exactly those
processes by PID (a reused PID is never signalled), the databases last.
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
from mmsearch.tools import services

# stopped after everything that talks to them, each with its own clean-shutdown signal
BACKING_SERVICES = {"redis": signal.SIGTERM, "postgres": signal.SIGINT}  # SIGINT: Postgres' fast shutdown
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
HEALTHY = "healthy"
REGISTERED_MODEL = "mmsearch-esci"


# every port the stack can listen on: StackSettings.<name>_port, moved by MMSEARCH_<NAME>_PORT
PORT_NAMES = ("airflow", "mlflow", "postgres", "redis", "log_server", "serve")


class StackError(RuntimeError):
    """The stack could not start (port taken, a process died, health never came)."""


@dataclass(frozen=True)
class StackSettings:
    host: str = "127.0.0.1"
    airflow_port: int = 8080
    mlflow_port: int = 5000
    postgres_port: int = 5432
    redis_port: int = 6379
    log_server_port: int = 8793
    serve_port: int = 5001
    executor: str = "local"
    workers: int = 2
    # each serving worker holds the model (~0.6 GB); two parse JSON on both cores at once
    serve_workers: int = 2
    admin_user: str = "admin"
    # A fixed admin password (MMSEARCH_ADMIN_PASSWORD); empty: Airflow generates one.
    admin_password: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, **overrides) -> StackSettings:
        """Ports from MMSEARCH_<NAME>_PORT, the executor from MMSEARCH_EXECUTOR / MMSEARCH_WORKERS;
        `overrides` (the CLI's) win."""
        env = os.environ
        values = {
            f"{name}_port": int(env.get(f"MMSEARCH_{name.upper()}_PORT", getattr(cls, f"{name}_port")))
            for name in PORT_NAMES
        }
        values["executor"] = env.get("MMSEARCH_EXECUTOR", cls.executor)
        values["workers"] = int(env.get("MMSEARCH_WORKERS", cls.workers))
        values["serve_workers"] = int(env.get("MMSEARCH_SERVE_WORKERS", cls.serve_workers))
        values["admin_password"] = env.get("MMSEARCH_ADMIN_PASSWORD", "")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["executor"] not in EXECUTORS:
            raise StackError(f"EXECUTOR={values['executor']}: choose one of {', '.join(EXECUTORS)}")
        if values["workers"] < 1:
            raise StackError(f"WORKERS={values['workers']}: at least 1")
        return cls(**values)

    @property
    def airflow_url(self) -> str:
        return f"http://{self.host}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def serve_url(self) -> str:
        return f"http://{self.host}:{self.serve_port}"

    def ports(self) -> dict[str, int]:
        """Every port the stack listens on, by the variable that moves it."""
        ports = {
            "MMSEARCH_AIRFLOW_PORT": self.airflow_port,
            "MMSEARCH_MLFLOW_PORT": self.mlflow_port,
            "MMSEARCH_POSTGRES_PORT": self.postgres_port,
            "MMSEARCH_LOG_SERVER_PORT": self.log_server_port,
        }
        if self.executor == "celery":
            ports["MMSEARCH_REDIS_PORT"] = self.redis_port
        return ports


def stack_dir() -> Path:
    return C.mmsearch_home() / "stack"


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME", C.mmsearch_home() / "airflow")).resolve()


def password_file() -> Path:
    return airflow_home() / "simple_auth_manager_passwords.json.generated"


def secrets_file() -> Path:
    return stack_dir() / "secrets.json"


def admin_password(settings: StackSettings) -> str:
    return read_json(password_file())[settings.admin_user]


SECRET_NAMES = ("jwt_secret", "secret_key", "postgres_password", "redis_password", "mlflow_admin_password")


def stack_secrets() -> dict:
    """Airflow's shared JWT and session secrets and the services' passwords: made once, mode 0600."""
    path = secrets_file()
    known = read_json(path) if path.exists() else {}
    missing = [name for name in SECRET_NAMES if name not in known]
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        made = {**known, **{name: secrets.token_urlsafe(24) for name in missing}}
        services.write_private(path, json.dumps(made, indent=2, sort_keys=True) + "\n")
    return read_json(path)


def _recorded_settings() -> dict:
    """The executor and worker count the running stack was started with (status and serve use them)."""
    path = stack_dir() / "settings.json"
    return read_json(path) if path.exists() else {}


def stack_env(settings: StackSettings) -> dict:
    """The environment of every process in the stack; the DAG's tasks inherit it."""
    keys = stack_secrets()
    host, pg_password = settings.host, keys["postgres_password"]
    airflow_db = services.postgres_url(pg_password, host, settings.postgres_port, "airflow", "psycopg2")
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
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS[settings.executor],
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            # LocalExecutor: two task slots (two cores); Celery: two per worker. The ML tasks spend
            # seconds importing TensorFlow and writing to MLflow, so the baselines run beside the two
            # trainings instead of after them, and drift beside transform
            "AIRFLOW__CORE__PARALLELISM": str(2 * settings.workers if settings.executor == "celery" else 2),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.admin_user}:admin",
            "AIRFLOW__API__BASE_URL": settings.airflow_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": keys["secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # one log server (ours, on 127.0.0.1) serves the shared log folder for workers and triggerer
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.log_server_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.log_server_port),
            # a worker that dies mid-task: its task fails and is retried after 1 minute, not 5
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            # the task supervisor wakes this often (default 5 s): under Celery it noticed a finished
            # task only then, seconds lost per task
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "MLFLOW_TRACKING_URI": settings.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": keys["mlflow_admin_password"],
            # for mmsearch_maintenance's `airflow db clean`: Airflow 3 scrubs the URL from tasks
            "MMSEARCH_AIRFLOW_DB_URL": airflow_db,
            # MLflow's job runner serves GenAI evaluation jobs, which mmsearch has none of: ~250 MB saved
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
    )
    if settings.executor == "celery":
        env.update(
            {
                "AIRFLOW__CELERY__BROKER_URL": f"redis://:{keys['redis_password']}@{host}:{settings.redis_port}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+"
                + services.postgres_url(pg_password, host, settings.postgres_port, "airflow", "psycopg2"),
            }
        )
    return env


def _mlflow_server_env(settings: StackSettings, env: dict) -> dict:
    """The MLflow server's own settings: stores in Postgres, basic auth; none of it on a command line."""
    keys = stack_secrets()
    server = services.postgres_url(keys["postgres_password"], settings.host, settings.postgres_port, "", "psycopg2")
    auth_config = stack_dir() / "mlflow-auth.ini"
    services.write_private(
        auth_config,
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {server}mlflow_auth\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a checked password is cached for 5 minutes: each check is a PBKDF2 hash, and training
        # sends hundreds of requests (uncached, the server took more CPU than the training)
        "auth_cache_ttl_seconds = 300\n",
    )
    return {
        **env,
        "MLFLOW_BACKEND_STORE_URI": f"{server}mlflow",
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": keys["mlflow_admin_password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": keys["secret_key"],
    }


def _ml_python() -> str:
    return os.environ.get("MMSEARCH_ML_PYTHON", str(C.REPO_ROOT / ".venvs" / "ml" / "bin" / "python"))


def _airflow_cli() -> str:
    return str(Path(sys.executable).parent / "airflow")


def _log_server_command(settings: StackSettings) -> list[str]:
    """Airflow's own log-server app, bound to `host` (Airflow binds it to every interface)."""
    code = (
        "import uvicorn; uvicorn.run('airflow.utils.serve_logs.log_server:get_app', factory=True, "
        f"host={settings.host!r}, port={settings.log_server_port}, log_config=None, access_log=False)"
    )
    return [sys.executable, "-c", code]


def _commands(settings: StackSettings) -> dict[str, list[str]]:
    """The processes after the databases, in start order."""
    airflow = _airflow_cli()
    mlflow_dir = C.mmsearch_home() / "mlflow-server"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    commands = {
        "mlflow": [
            *(_ml_python(), "-m", "mlflow", "server", "--app-name", "basic-auth"),
            *("--host", settings.host, "--port", str(settings.mlflow_port), "--workers", "1"),
            *("--serve-artifacts", "--artifacts-destination", str(mlflow_dir / "artifacts")),
        ],
        "api-server": [airflow, "api-server", "--host", settings.host, "--port", str(settings.airflow_port)],
        "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        "log-server": _log_server_command(settings),
    }
    if settings.executor == "celery":
        for number in range(1, settings.workers + 1):
            commands[f"worker-{number}"] = [
                *(airflow, "celery", "worker", "--skip-serve-logs", "--without-gossip", "--without-mingle"),
                *("--celery-hostname", f"worker-{number}@%h", "--concurrency", "2"),
            ]
    return commands


def _kept(name: str, command: list[str]) -> list[str]:
    """The command under the keeper, which starts it again when it exits on its own."""
    return [sys.executable, "-m", "mmsearch.tools.keeper", name, "--", *command]


def _service_commands(settings: StackSettings) -> dict[str, list[str]]:
    commands = {"postgres": services.postgres_command(stack_dir(), settings.host, settings.postgres_port)}
    if settings.executor == "celery":
        config = services.write_redis_config(
            stack_dir(), settings.host, settings.redis_port, stack_secrets()["redis_password"]
        )
        commands["redis"] = [services.redis_binary(), str(config)]
    return commands


def free_port() -> int:
    """A port nothing listens on now (the OS picks it), on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_env() -> dict[str, str]:
    """MMSEARCH_<NAME>_PORT for every port of the stack, each a free one: a second stack beside the first."""
    return {f"MMSEARCH_{name.upper()}_PORT": str(free_port()) for name in PORT_NAMES}


def airflow_api(status: dict):
    """An httpx client on Airflow's REST API, logged in as the stack's admin (`status` as `status()` returns it)."""
    import httpx

    password = json.loads(Path(status["admin_password_file"]).read_text())[status["admin_user"]]
    token = httpx.post(
        f"{status['airflow_url']}/auth/token", json={"username": status["admin_user"], "password": password}
    ).raise_for_status()
    return httpx.Client(
        base_url=f"{status['airflow_url']}/api/v2",
        timeout=30,
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
    )


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


def _celery_workers(env: dict) -> set[str]:
    """The Celery workers answering a ping through the broker."""
    code = (
        "import json; from airflow.providers.celery.executors.celery_executor import app; "
        "print(json.dumps(sorted(app.control.inspect(timeout=2).ping() or {})))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    lines = result.stdout.strip().splitlines()
    return set(json.loads(lines[-1])) if result.returncode == 0 and lines else set()


def health(settings: StackSettings, env: dict | None = None) -> dict:
    """Each component's state: MLflow's /health, Airflow's /api/v2/monitor/health, the Celery
    workers' ping through Redis, the served model's /ping."""
    states = {"mlflow": HEALTHY if _get_json(f"{settings.mlflow_url}/health") else "down"}
    airflow = _get_json(f"{settings.airflow_url}/api/v2/monitor/health")
    states["api-server"] = HEALTHY if airflow else "down"
    for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        states[component] = (airflow or {}).get(component, {}).get("status") or "down"
    if settings.executor == "celery":
        answering = _celery_workers(env or stack_env(settings))
        for number in range(1, settings.workers + 1):
            up_ = any(name.startswith(f"worker-{number}@") for name in answering)
            states[f"worker-{number}"] = HEALTHY if up_ else "down"
    if "serve" in _recorded():
        states["serve"] = HEALTHY if _get_json(f"{settings.serve_url}/ping") else "down"
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


def _start(name: str, command: list[str], env: dict) -> dict:
    """Start one process in its own session, logging to stack/logs/<name>.log; record its PID."""
    import psutil

    logs = stack_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    entry = {"pid": process.pid, "create_time": psutil.Process(process.pid).create_time(), "log": str(log.name)}
    write_json(stack_dir() / "pids.json", {**_recorded(), name: entry})  # `down` can stop a partial stack
    return entry


def _launch(name: str, command: list[str], settings: StackSettings, env: dict) -> dict:
    """Start one component with its environment (the MLflow server's carries its own settings)."""
    return _start(name, command, _mlflow_server_env(settings, env) if name == "mlflow" else env)


def _wait_ready(name: str, settings: StackSettings) -> None:
    """Block until a database accepts connections; the other components report through `health`."""
    keys = stack_secrets()
    if name == "postgres":
        services.wait_for_postgres(keys["postgres_password"], settings.host, settings.postgres_port)
    elif name == "redis":
        services.wait_for_redis(settings.host, settings.redis_port, keys["redis_password"])


def _start_services(settings: StackSettings, env: dict) -> None:
    """PostgreSQL (initialised on first use, its databases created) and, for Celery, Redis."""
    services.init_postgres(stack_dir(), stack_secrets()["postgres_password"])
    started = _service_commands(settings)
    for name, command in started.items():
        _launch(name, command, settings, env)
    for name in started:
        _wait_ready(name, settings)


def _check_free(host: str, port: int, variable: str) -> None:
    if not _port_free(host, port):
        raise StackError(f"port {port} on {host} is in use; set {variable} to a free port")


def _wait_healthy(settings: StackSettings, env: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = health(settings, env)
        pids = _recorded()
        dead = set(pids) - set(_running(pids))
        if dead:
            down()
            name = sorted(dead)[0]
            raise StackError(
                f"{name} exited during start-up; its log ({pids[name]['log']}) ends:\n{_tail(Path(pids[name]['log']))}"
            )
        if all(state == HEALTHY for state in states.values()):
            return
        if time.monotonic() > deadline:
            down()
            raise StackError(f"not healthy after {timeout:.0f} s: {states}; logs in {stack_dir() / 'logs'}")
        time.sleep(1)


def up(settings: StackSettings | None = None, timeout: float = 240.0) -> dict:
    settings = settings or StackSettings.from_env()
    if _running(_recorded()):
        raise StackError(f"the stack is already running (PIDs in {stack_dir() / 'pids.json'}); `make down` first")
    for variable, port in settings.ports().items():
        _check_free(settings.host, port, variable)
    env = stack_env(settings)
    write_json(stack_dir() / "settings.json", {"executor": settings.executor, "workers": settings.workers})
    airflow_home().mkdir(parents=True, exist_ok=True)
    try:
        _start_services(settings, env)
        migrate = subprocess.run([_airflow_cli(), "db", "migrate"], env=env, capture_output=True, text=True)
        if migrate.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{migrate.stderr[-2000:]}")
    except (StackError, services.ServiceError) as error:
        down()
        raise StackError(str(error)) from None
    if settings.admin_password:
        write_json(password_file(), {settings.admin_user: settings.admin_password})
        password_file().chmod(0o600)
    for name, command in _commands(settings).items():
        _launch(name, _kept(name, command), settings, env)
    _wait_healthy(settings, env, timeout)
    workers = f" with {settings.workers} Celery workers" if settings.executor == "celery" else ""
    # the CLI sends this to stderr: stdout carries only the JSON status
    print(
        f"Airflow UI   {settings.airflow_url}  (user {settings.admin_user}, "
        f"password {admin_password(settings)}, from {password_file()})\n"
        f"MLflow UI    {settings.mlflow_url}  (user admin, password: mlflow_admin_password in {secrets_file()})\n"
        f"executor     {EXECUTORS[settings.executor]}{workers}, metadata in PostgreSQL on :{settings.postgres_port}\n"
        f"logs         {stack_dir() / 'logs'}\nserve with   make serve\nstop with    make down"
    )
    return status(settings)


def running_settings(**overrides) -> StackSettings:
    """The running stack's settings: the executor and workers it was started with."""
    return StackSettings.from_env(**{**_recorded_settings(), **overrides})


def serve(settings: StackSettings | None = None, timeout: float = 180.0) -> dict:
    """`mlflow models serve` of the champion, in the ML environment, on 127.0.0.1; part of the stack."""
    settings = settings or running_settings()
    running = _running(_recorded())
    if "mlflow" not in running:
        raise StackError("the stack is not running; `make up` first")
    if "serve" in running:
        raise StackError(f"the champion is already served on {settings.serve_url} (PID {running['serve']['pid']})")
    _check_free(settings.host, settings.serve_port, "MMSEARCH_SERVE_PORT")
    env = stack_env(settings)
    version = champion_version(settings, env)
    model_uri = f"models:/{REGISTERED_MODEL}@champion"
    command = [
        *(_ml_python(), "-m", "mlflow", "models", "serve", "--model-uri", model_uri, "--env-manager", "local"),
        *("--host", settings.host, "--port", str(settings.serve_port), "--workers", str(settings.serve_workers)),
    ]
    env["PATH"] = f"{Path(_ml_python()).parent}{os.pathsep}{env.get('PATH', '')}"  # it execs the env's uvicorn
    entry = _start("serve", command, env)
    deadline = time.monotonic() + timeout
    while not _get_json(f"{settings.serve_url}/ping"):
        if not _running({"serve": entry}):
            _forget("serve")
            raise StackError(f"mlflow models serve exited; its log ({entry['log']}) ends:\n{_tail(Path(entry['log']))}")
        if time.monotonic() > deadline:
            stop("serve")
            raise StackError(f"the served model did not answer /ping in {timeout:.0f} s; log: {entry['log']}")
        time.sleep(1)
    print(f"champion {REGISTERED_MODEL} v{version} served at {settings.serve_url}/invocations  (stop with make down)")
    return {"serve_url": settings.serve_url, "pid": entry["pid"], "model_uri": model_uri, "version": version}


def champion_version(settings: StackSettings, env: dict) -> str:
    """The version the registry's champion alias points at, asked of the stack's MLflow server;
    StackError if there is none, with the gate's last reason and what to do next."""
    import httpx

    auth = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    with httpx.Client(base_url=f"{settings.mlflow_url}/api/2.0/mlflow", auth=auth, timeout=10) as mlflow:
        found = mlflow.get("/registered-models/alias", params={"name": REGISTERED_MODEL, "alias": "champion"})
        if found.is_success:
            return found.json()["model_version"]["version"]
        # no such model: 404; a model without the alias: 400 "Registered model alias champion not found."
        if found.status_code not in (400, 404) or "not found" not in found.text:
            raise StackError(f"MLflow at {settings.mlflow_url} answered {found.status_code}: {found.text[:300]}")
        latest = mlflow.get(
            "/model-versions/search",
            params={"filter": f"name='{REGISTERED_MODEL}'", "order_by": "version_number DESC", "max_results": 1},
        )
        versions = latest.json().get("model_versions", []) if latest.is_success else []
    if not versions:
        raise StackError(
            f"nothing to serve: no model is registered as {REGISTERED_MODEL} yet. Next: trigger the "
            f"mmsearch_training DAG ({settings.airflow_url}) and serve once its register task promotes a champion"
        )
    newest = versions[0]
    reason = {tag["key"]: tag["value"] for tag in newest.get("tags", [])}.get("promotion_decision", "not recorded")
    raise StackError(
        f"nothing to serve: {REGISTERED_MODEL} has no champion. The gate kept v{newest['version']} "
        f"challenger: {reason}. Next: a run whose model no baseline "
        "beats significantly becomes the champion: more data or other candidates (docs/design.md, The model)"
    )


def _forget(name: str) -> None:
    write_json(stack_dir() / "pids.json", {k: v for k, v in _recorded().items() if k != name})


def stop(name: str, grace_seconds: float = 30.0) -> None:
    """Stop one recorded process (its whole group) by PID: its clean-shutdown signal, then SIGKILL."""
    import psutil

    entry = _running(_recorded()).get(name)
    if entry:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry["pid"], BACKING_SERVICES.get(name, signal.SIGTERM))
        with contextlib.suppress(psutil.NoSuchProcess):
            _, alive = psutil.wait_procs([psutil.Process(entry["pid"])], timeout=grace_seconds)
            if alive:
                os.killpg(entry["pid"], signal.SIGKILL)
                psutil.wait_procs(alive, timeout=10)
    _forget(name)


def restart(name: str) -> dict:
    """Stop one component by PID and start it again with the same command (Postgres, Redis, ...)."""
    settings = running_settings()
    env = stack_env(settings)
    kept = {key: _kept(key, command) for key, command in _commands(settings).items()}
    commands = {**_service_commands(settings), **kept}
    if name == "serve":
        stop(name)
        return {"restarted": name, "pid": serve(settings)["pid"]}
    if name not in commands:
        raise StackError(f"no component {name!r}; the stack has {', '.join(commands)}, serve")
    stop(name)
    entry = _launch(name, commands[name], settings, env)
    _wait_ready(name, settings)
    return {"restarted": name, "pid": entry["pid"]}


def _tree(pid: int) -> list:
    """The process and its descendants; none if it has just exited."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def memory_mb(running: dict) -> dict:
    """Memory of each running component's process tree, in MB, as proportional set size: a shared
    page counts once over the processes sharing it (Postgres' shared buffers, forked workers)."""
    import psutil

    usage = {}
    for name, entry in running.items():
        total = 0
        for process in _tree(entry["pid"]):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += process.memory_full_info().pss
        usage[name] = round(total / 2**20)
    return usage


def listening_sockets(running: dict | None = None) -> list[dict]:
    """Every TCP socket listening in a process the stack started (or one of its children)."""
    import psutil

    found = []
    for name, entry in (running if running is not None else _running(_recorded())).items():
        for process in _tree(entry["pid"]):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                for sock in process.net_connections(kind="inet"):
                    if sock.status == psutil.CONN_LISTEN:
                        address = {"ip": sock.laddr.ip, "port": sock.laddr.port}
                        found.append({"component": name, "pid": process.pid, **address})
    return found


def status(settings: StackSettings | None = None) -> dict:
    """The running stack's URLs, ports, health, PIDs and memory; StackError if nothing runs."""
    settings = settings or running_settings()
    running = _running(_recorded())
    if not running:
        raise StackError(
            f"the stack is not running (no live process in {stack_dir() / 'pids.json'}); `make up` starts it"
        )
    memory = memory_mb(running)
    return {
        "airflow_url": settings.airflow_url,
        "mlflow_url": settings.mlflow_url,
        "serve_url": settings.serve_url,
        "executor": EXECUTORS[settings.executor],
        "admin_user": settings.admin_user,
        "admin_password_file": str(password_file()),
        "secrets_file": str(secrets_file()),
        "ports": {**settings.ports(), **({"MMSEARCH_SERVE_PORT": settings.serve_port} if "serve" in running else {})},
        "health": health(settings) if running else {},
        "pids": {name: entry["pid"] for name, entry in running.items()},
        "listening": listening_sockets(running),
        "memory_mb": {**memory, "total": sum(memory.values())},
        "logs": str(stack_dir() / "logs"),
    }


# the health entry that speaks for a process, where its name is not the same
HEALTH_OF = {"postgres": "metadatabase", "dag-processor": "dag_processor"}


def status_table(found: dict) -> str:
    """`status` as a person reads it: a line per process, then where to go."""
    listening = {}
    for sock in found["listening"]:
        listening.setdefault(sock["component"], []).append(f"{sock['ip']}:{sock['port']}")
    rows = [("component", "pid", "memory", "health", "listening")]
    for name, pid in found["pids"].items():
        health_ = found["health"].get(HEALTH_OF.get(name, name), "running")
        ports = ", ".join(sorted(set(listening.get(name, []))))
        rows.append((name, str(pid), f"{found['memory_mb'].get(name, 0)} MB", health_, ports))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += [
        f"total memory {found['memory_mb']['total']} MB, executor {found['executor']}",
        f"Airflow UI   {found['airflow_url']}  (user {found['admin_user']}, password in "
        f"{found['admin_password_file']})",
        f"MLflow UI    {found['mlflow_url']}  (user admin, password: mlflow_admin_password in {found['secrets_file']})",
        f"logs         {found['logs']}",
    ]
    if "serve" in found["pids"]:
        lines.append(f"served model {found['serve_url']}/invocations")
    return "\n".join(lines)


def down(grace_seconds: float = 30.0) -> dict:
    """SIGTERM each recorded process group, SIGKILL what is left after the grace period; then
    Redis and PostgreSQL (fast shutdown), once nothing talks to them."""
    import psutil

    recorded = _running(_recorded())
    first = {name: entry for name, entry in recorded.items() if name not in BACKING_SERVICES}
    for entry in first.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry["pid"], signal.SIGTERM)
    processes = []
    for entry in first.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            processes.append(psutil.Process(entry["pid"]))
    _, alive = psutil.wait_procs(processes, timeout=grace_seconds)
    for entry in first.values():  # the whole group: task processes a leader left behind too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry["pid"], signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)  # SIGKILL is sent, not done: return once they are gone
    for name in BACKING_SERVICES:
        if name in recorded:
            stop(name, grace_seconds)
    (stack_dir() / "pids.json").unlink(missing_ok=True)
    return {
        "stopped": {name: entry["pid"] for name, entry in recorded.items()},
        "killed_after_grace": [process.pid for process in alive],
    }
