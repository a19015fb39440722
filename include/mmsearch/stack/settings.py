"""The stack's settings (ports, executor, workers), its secrets and files, and the environment
every process in it gets."""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from mmsearch import paths
from mmsearch.io import read_json, write_json
from mmsearch.stack import services

EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
# every port the stack can listen on: StackSettings.<name>_port, moved by MMSEARCH_<NAME>_PORT
PORT_NAMES = ("airflow", "mlflow", "postgres", "redis", "log_server", "serve")
SECRET_NAMES = (
    "jwt_secret",
    "secret_key",
    "postgres_password",
    "redis_password",
    "mlflow_admin_password",
    "rerank_token",  # the re-ranking service's bearer token
)
# Airflow's settings docker-compose.yaml reads too (its env_file)
AIRFLOW_ENV_FILE = paths.REPO_ROOT / "docker" / "airflow.env"


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
    # how often the re-ranking service asks for the champion alias and the published catalogue
    serve_poll_seconds: float = 30.0
    executor: str = "local"
    workers: int = 2
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
        values["admin_password"] = env.get("MMSEARCH_ADMIN_PASSWORD", "")
        values["serve_poll_seconds"] = float(env.get("MMSEARCH_SERVE_POLL_SECONDS", cls.serve_poll_seconds))
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
        """Every port the stack listens on (Redis with Celery only, serve apart), by the variable that moves it."""
        listening = [name for name in PORT_NAMES if name != "serve" and (name != "redis" or self.executor == "celery")]
        return {f"MMSEARCH_{name.upper()}_PORT": getattr(self, f"{name}_port") for name in listening}


def stack_dir() -> Path:
    return paths.mmsearch_home() / "stack"


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME", paths.mmsearch_home() / "airflow")).resolve()


def password_file() -> Path:
    return airflow_home() / "simple_auth_manager_passwords.json.generated"


def secrets_file() -> Path:
    return stack_dir() / "secrets.json"


def admin_password(settings: StackSettings) -> str:
    return read_json(password_file())[settings.admin_user]


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


def remember(settings: StackSettings) -> None:
    write_json(stack_dir() / "settings.json", {"executor": settings.executor, "workers": settings.workers})


def running_settings(**overrides) -> StackSettings:
    """The running stack's settings: the executor and workers it was started with."""
    path = stack_dir() / "settings.json"
    return StackSettings.from_env(**{**(read_json(path) if path.exists() else {}), **overrides})


def shared_airflow_settings(path: Path = AIRFLOW_ENV_FILE) -> dict[str, str]:
    """KEY=value lines of docker/airflow.env (comments and blank lines skipped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def stack_env(settings: StackSettings) -> dict:
    """The environment of every process in the stack; the DAG's tasks inherit it."""
    keys = stack_secrets()
    host, pg_password = settings.host, keys["postgres_password"]
    airflow_db = services.postgres_url(pg_password, host, settings.postgres_port, "airflow", "psycopg2")
    env = {**os.environ, **shared_airflow_settings()}
    env.update(
        {
            "MMSEARCH_HOME": str(paths.mmsearch_home()),
            "AIRFLOW_HOME": str(airflow_home()),
            "AIRFLOW__CORE__DAGS_FOLDER": env.get("AIRFLOW__CORE__DAGS_FOLDER", str(paths.REPO_ROOT / "dags")),
            "AIRFLOW__CORE__PLUGINS_FOLDER": env.get("AIRFLOW__CORE__PLUGINS_FOLDER", str(paths.REPO_ROOT / "plugins")),
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS[settings.executor],
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            # LocalExecutor: two task slots (two cores); Celery: two per worker. The ML tasks spend
            # seconds importing TensorFlow and writing to MLflow, so the baselines run beside the two
            # trainings instead of after them, and drift beside transform
            "AIRFLOW__CORE__PARALLELISM": str(2 * settings.workers if settings.executor == "celery" else 2),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.admin_user}:admin",
            "AIRFLOW__API__BASE_URL": settings.airflow_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": keys["secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            # one log server (ours, on 127.0.0.1) serves the shared log folder for workers and triggerer
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.log_server_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.log_server_port),
            "MLFLOW_TRACKING_URI": settings.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": keys["mlflow_admin_password"],
            # for mmsearch_maintenance's `airflow db clean`: Airflow 3 scrubs the URL from tasks
            "MMSEARCH_AIRFLOW_DB_URL": airflow_db,
        }
    )
    if settings.executor == "celery":
        env.update(
            {
                "AIRFLOW__CELERY__BROKER_URL": f"redis://:{keys['redis_password']}@{host}:{settings.redis_port}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db,
            }
        )
    return env


def mlflow_server_env(settings: StackSettings, env: dict) -> dict:
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
        # MLflow's job runner serves GenAI evaluation jobs, which mmsearch has none of: ~250 MB saved
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def free_port() -> int:
    """A port nothing listens on now (the OS picks it), on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_env() -> dict[str, str]:
    """MMSEARCH_<NAME>_PORT for every port of the stack, each a free one: a second stack beside the first."""
    return {f"MMSEARCH_{name.upper()}_PORT": str(free_port()) for name in PORT_NAMES}
