"""up, down, serve, restart, status: the stack's commands, over the component table."""

from __future__ import annotations

import subprocess
import sys
import time

from mmsearch import config
from mmsearch.io import aligned_columns, write_json
from mmsearch.stack import components, processes, services
from mmsearch.stack.clients import champion_version
from mmsearch.stack.components import Component
from mmsearch.stack.health import HEALTHY, get_json, health
from mmsearch.stack.settings import (
    EXECUTORS,
    StackError,
    StackSettings,
    admin_password,
    airflow_home,
    password_file,
    remember,
    running_settings,
    secrets_file,
    stack_dir,
    stack_env,
    stack_secrets,
)

# the health entry that speaks for a process, where its name is not the same
HEALTH_OF = {"postgres": "metadatabase", "dag-processor": "dag_processor"}


def _launch(component: Component) -> dict:
    return processes.start(
        component.name, component.launch_command(), component.env, component.stop_signal, component.backing
    )


def _wait_healthy(settings: StackSettings, env: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = health(settings, env)
        pids = processes.recorded()
        dead = set(pids) - set(processes.running(pids))
        if dead:
            down()
            name = sorted(dead)[0]
            log = pids[name]["log"]
            raise StackError(f"{name} exited during start-up; its log ({log}) ends:\n{processes.tail(log)}")
        if all(state == HEALTHY for state in states.values()):
            return
        if time.monotonic() > deadline:
            down()
            raise StackError(f"not healthy after {timeout:.0f} s: {states}; logs in {stack_dir() / 'logs'}")
        time.sleep(1)


def _start_databases(settings: StackSettings, env: dict) -> None:
    """PostgreSQL (initialised on first use, its databases created), Redis for Celery; then
    Airflow's schema migrated."""
    services.init_postgres(stack_dir(), stack_secrets()["postgres_password"])
    started = components.databases(settings, env)
    for component in started:
        _launch(component)
    for component in started:
        component.ready()
    migrate = subprocess.run([components.airflow_cli(), "db", "migrate"], env=env, capture_output=True, text=True)
    if migrate.returncode != 0:
        raise StackError(f"airflow db migrate failed:\n{migrate.stderr[-2000:]}")


def up(settings: StackSettings | None = None, timeout: float = 240.0) -> dict:
    settings = settings or StackSettings.from_env()
    if processes.running():
        raise StackError(f"the stack is already running (PIDs in {processes.pids_file()}); `make down` first")
    for variable, port in settings.ports().items():
        processes.check_free(settings.host, port, variable)
    env = stack_env(settings)
    remember(settings)
    airflow_home().mkdir(parents=True, exist_ok=True)
    try:
        _start_databases(settings, env)
    except (StackError, services.ServiceError) as error:
        down()
        raise StackError(str(error)) from None
    if settings.admin_password:
        write_json(password_file(), {settings.admin_user: settings.admin_password})
        password_file().chmod(0o600)
    for component in components.servers(settings, env):
        _launch(component)
    _wait_healthy(settings, env, timeout)
    print(
        f"Airflow password {admin_password(settings)} (user {settings.admin_user}, kept in {password_file()})",
        file=sys.stderr,
    )
    return status(settings)


def serve(settings: StackSettings | None = None, timeout: float = 180.0) -> dict:
    """The re-ranking service of the champion, in the ML environment, on 127.0.0.1; part of the stack."""
    settings = settings or running_settings()
    running = processes.running()
    if "mlflow" not in running:
        raise StackError("the stack is not running; `make up` first")
    if "serve" in running:
        raise StackError(f"the champion is already served on {settings.serve_url} (PID {running['serve']['pid']})")
    processes.check_free(settings.host, settings.serve_port, "MMSEARCH_SERVE_PORT")
    env = stack_env(settings)
    champion_version(settings, env)  # a clear error before the service starts, when there is none
    entry = _launch(components.serving(settings, env))
    found = wait_for_answer(f"{settings.serve_url}/health", "serve", entry, timeout)
    version = found["model_version"]
    print(
        f"champion {config.REGISTERED_MODEL} v{version} re-ranks {found['catalogue_rows']} products at "
        f"{settings.serve_url}/rerank  (token: rerank_token in {secrets_file()}; stop with make down)"
    )
    return {"serve_url": settings.serve_url, "pid": entry["pid"], "version": version, **found}


def wait_for_answer(url: str, name: str, entry: dict, timeout: float) -> dict:
    """What `url` answers once the process started as `name` serves it; StackError with its log's
    end if the process exits first, or (the process stopped) if nothing answers in `timeout`."""
    deadline = time.monotonic() + timeout
    while not (found := get_json(url)):
        if not processes.running({name: entry}):
            processes.forget(name)
            raise StackError(f"{name} exited; its log ({entry['log']}) ends:\n{processes.tail(entry['log'])}")
        if time.monotonic() > deadline:
            processes.stop(name)
            raise StackError(f"{name} did not answer {url} in {timeout:.0f} s; log: {entry['log']}")
        time.sleep(0.2)
    return found


def restart(name: str) -> dict:
    """Stop one component by PID and start it again with the same command (Postgres, Redis, ...)."""
    settings = running_settings()
    if name == "serve":
        processes.stop(name)
        return {"restarted": name, "pid": serve(settings)["pid"]}
    env = stack_env(settings)
    table = {c.name: c for c in [*components.databases(settings, env), *components.servers(settings, env)]}
    if name not in table:
        raise StackError(f"no component {name!r}; the stack has {', '.join(table)}, serve")
    processes.stop(name)
    entry = _launch(table[name])
    if table[name].ready:
        table[name].ready()
    return {"restarted": name, "pid": entry["pid"]}


def status(settings: StackSettings | None = None) -> dict:
    """The running stack's URLs, ports, health, PIDs and memory; StackError if nothing runs."""
    settings = settings or running_settings()
    running = processes.running()
    if not running:
        raise StackError(f"the stack is not running (nothing alive in {processes.pids_file()}); `make up` starts it")
    memory = processes.memory_mb(running)
    return {
        "airflow_url": settings.airflow_url,
        "mlflow_url": settings.mlflow_url,
        "serve_url": settings.serve_url,
        "executor": EXECUTORS[settings.executor],
        "admin_user": settings.admin_user,
        "admin_password_file": str(password_file()),
        "secrets_file": str(secrets_file()),
        "ports": {**settings.ports(), **({"MMSEARCH_SERVE_PORT": settings.serve_port} if "serve" in running else {})},
        "health": health(settings),
        "pids": {name: entry["pid"] for name, entry in running.items()},
        "listening": processes.listening_sockets(running),
        "memory_mb": {**memory, "total": sum(memory.values())},
        "logs": str(stack_dir() / "logs"),
    }


def status_table(found: dict, started: bool = False) -> str:
    """`status` as a person reads it: a line per process, then where to go (and, just `started`,
    what to do next)."""
    listening: dict[str, list[str]] = {}
    for sock in found["listening"]:
        listening.setdefault(sock["component"], []).append(f"{sock['ip']}:{sock['port']}")
    rows = [("component", "pid", "memory", "health", "listening")]
    for name, pid in found["pids"].items():
        state = found["health"].get(HEALTH_OF.get(name, name), "running")
        ports = ", ".join(sorted(set(listening.get(name, []))))
        rows.append((name, str(pid), f"{found['memory_mb'].get(name, 0)} MB", state, ports))
    lines = aligned_columns(rows)
    lines += [
        f"total memory {found['memory_mb']['total']} MB, executor {found['executor']}",
        f"Airflow UI   {found['airflow_url']}  (user {found['admin_user']}, password in "
        f"{found['admin_password_file']})",
        f"MLflow UI    {found['mlflow_url']}  (user admin, password: mlflow_admin_password in {found['secrets_file']})",
        f"logs         {found['logs']}",
    ]
    if "serve" in found["pids"]:
        lines.append(f"re-ranker    {found['serve_url']}/rerank")
    if started:
        lines.append("next         make serve (the champion as a re-ranking service); make down stops it all")
    return "\n".join(lines)


def down_text(stopped: dict) -> str:
    """`down`'s answer as a person reads it."""
    if not stopped["stopped"]:
        return "nothing was running"
    names = ", ".join(f"{name} ({pid})" for name, pid in stopped["stopped"].items())
    killed = f"; killed after the grace period: PIDs {', '.join(map(str, stopped['killed_after_grace']))}"
    return f"stopped {len(stopped['stopped'])} processes: {names}" + (killed if stopped["killed_after_grace"] else "")


def down(grace_seconds: float = 30.0) -> dict:
    """Everything but the databases at once (each its stop signal, SIGKILL after the grace
    period); then the databases, last started first, once nothing talks to them."""
    running = processes.running()
    servers = {name: entry for name, entry in running.items() if not entry.get("backing")}
    killed = processes.stop_all(servers, grace_seconds)
    for name in reversed([name for name in running if name not in servers]):
        killed += processes.stop_all({name: running[name]}, grace_seconds)
    processes.pids_file().unlink(missing_ok=True)
    return {"stopped": {name: entry["pid"] for name, entry in running.items()}, "killed_after_grace": killed}
