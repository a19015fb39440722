"""What the stack runs, as a table: each component's command, environment, readiness check,
stop signal, and whether the keeper starts it again when it exits on its own (compose's
`restart: always`). Start order is table order; the databases come first and stop last."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmsearch import paths
from mmsearch.rerank import RERANK_TOKEN_VARIABLE
from mmsearch.stack import services
from mmsearch.stack.settings import StackSettings, mlflow_server_env, stack_dir, stack_secrets


@dataclass(frozen=True)
class Component:
    name: str
    command: list[str]
    env: dict
    # blocks until it accepts connections (the databases); the others report through health
    ready: Callable[[], None] | None = None
    stop_signal: str = "SIGTERM"
    kept: bool = True
    backing: bool = False  # a database: started first, stopped after everything that talks to it

    def launch_command(self) -> list[str]:
        if not self.kept:
            return self.command
        return [sys.executable, "-m", "mmsearch.stack.keeper", self.name, "--", *self.command]


def airflow_cli() -> str:
    return str(Path(sys.executable).parent / "airflow")


def _log_server_command(settings: StackSettings) -> list[str]:
    """Airflow's own log-server app, bound to `host` (Airflow binds it to every interface)."""
    code = (
        "import uvicorn; uvicorn.run('airflow.utils.serve_logs.log_server:get_app', factory=True, "
        f"host={settings.host!r}, port={settings.log_server_port}, log_config=None, access_log=False)"
    )
    return [sys.executable, "-c", code]


def databases(settings: StackSettings, env: dict) -> list[Component]:
    """PostgreSQL and, for Celery, Redis."""
    keys, host = stack_secrets(), settings.host
    postgres = services.postgres_command(stack_dir(), host, settings.postgres_port)
    ready = functools.partial(services.wait_for_postgres, keys["postgres_password"], host, settings.postgres_port)
    # SIGINT: Postgres' fast shutdown
    found = [Component("postgres", postgres, env, ready, stop_signal="SIGINT", kept=False, backing=True)]
    if settings.executor == "celery":
        config = services.write_redis_config(stack_dir(), host, settings.redis_port, keys["redis_password"])
        ready = functools.partial(services.wait_for_redis, host, settings.redis_port, keys["redis_password"])
        found.append(Component("redis", [services.redis_binary(), str(config)], env, ready, kept=False, backing=True))
    return found


def servers(settings: StackSettings, env: dict) -> list[Component]:
    """MLflow and Airflow's processes, started once the databases answer."""
    airflow = airflow_cli()
    mlflow_dir = paths.mmsearch_home() / "mlflow-server"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow = [
        paths.ml_python(),
        "-m",
        "mlflow",
        "server",
        "--app-name=basic-auth",
        f"--host={settings.host}",
        f"--port={settings.mlflow_port}",
        "--workers=1",
        "--serve-artifacts",
        f"--artifacts-destination={mlflow_dir / 'artifacts'}",
    ]
    found = [
        Component("mlflow", mlflow, mlflow_server_env(settings, env)),
        Component(
            "api-server", [airflow, "api-server", "--host", settings.host, "--port", str(settings.airflow_port)], env
        ),
        Component("scheduler", [airflow, "scheduler", "--skip-serve-logs"], env),
        Component("dag-processor", [airflow, "dag-processor"], env),
        Component("triggerer", [airflow, "triggerer", "--skip-serve-logs"], env),
        Component("log-server", _log_server_command(settings), env),
    ]
    if settings.executor == "celery":
        for number in range(1, settings.workers + 1):
            worker = [
                airflow,
                "celery",
                "worker",
                "--skip-serve-logs",
                "--without-gossip",
                "--without-mingle",
                f"--celery-hostname=worker-{number}@%h",
                "--concurrency=2",
            ]
            found.append(Component(f"worker-{number}", worker, env))
    return found


def serving(settings: StackSettings, env: dict) -> Component:
    """The re-ranking service (mmsearch.rerank) of the champion, in the ML environment;
    not kept: started on demand."""
    command = [paths.ml_python(), "-m", "mmsearch.rerank"]
    command += ["--host", settings.host, "--port", str(settings.serve_port)]
    command += ["--poll-seconds", str(settings.serve_poll_seconds)]
    return Component("serve", command, {**env, RERANK_TOKEN_VARIABLE: stack_secrets()["rerank_token"]}, kept=False)
