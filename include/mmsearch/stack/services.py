"""The stack's own PostgreSQL cluster and Redis server: Debian's binaries, data under
`$MMSEARCH_HOME/stack`, listening on 127.0.0.1 only, passwords from the stack's secrets.

PostgreSQL refuses to run as root; when the stack runs as root (containers, CI), the cluster
is initialised and run as Debian's `postgres` system user (setpriv, no fork: the PID recorded
is the postmaster's own).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

# Airflow's metadata, MLflow's tracking store, MLflow's users and permissions
DATABASES = ("airflow", "mlflow", "mlflow_auth")
DB_USER = "mmsearch"


class ServiceError(RuntimeError):
    """PostgreSQL or Redis could not be set up or reached."""


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, from its first byte (not written, then chmod-ed)."""
    tmp = path.parent / f".tmp-{path.name}"
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)
    os.replace(tmp, path)


def pg_bindir() -> Path:
    """Debian's PostgreSQL binaries (MMSEARCH_PG_BINDIR overrides), newest major version first."""
    if os.environ.get("MMSEARCH_PG_BINDIR"):
        return Path(os.environ["MMSEARCH_PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise ServiceError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin); run `make system-deps`")
    return Path(found[-1]).parent


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if not binary:
        raise ServiceError("redis-server is not installed; run `make system-deps`")
    return binary


def _as_postgres_user() -> list[str]:
    """The command prefix that drops root for PostgreSQL; nothing when not root."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def _give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)


def _check_reachable(directory: Path) -> None:
    """As root, every parent of the cluster must be traversable by the postgres user."""
    if os.geteuid() != 0:
        return
    for parent in [directory, *directory.parents]:
        if parent.exists() and not (parent.stat().st_mode & 0o001):
            raise ServiceError(
                f"PostgreSQL runs as the `postgres` user (it refuses root) and cannot enter {parent} "
                f"(mode {oct(parent.stat().st_mode & 0o777)}); `chmod o+x {parent}` or set MMSEARCH_HOME elsewhere"
            )


def postgres_data(stack_dir: Path) -> Path:
    return stack_dir / "postgres"


def init_postgres(stack_dir: Path, password: str) -> bool:
    """initdb the cluster once (scram-sha-256 for every connection); False if it exists."""
    data = postgres_data(stack_dir)
    if (data / "PG_VERSION").exists():
        return False
    _check_reachable(stack_dir)
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    _give_to_postgres(data)
    with tempfile.NamedTemporaryFile("w", dir=stack_dir, prefix=".pwfile-", delete=True) as pwfile:
        pwfile.write(password)
        pwfile.flush()
        _give_to_postgres(Path(pwfile.name))
        command = [*_as_postgres_user(), str(pg_bindir() / "initdb"), f"--pgdata={data}", f"--username={DB_USER}"]
        command += [f"--pwfile={pwfile.name}", "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale"]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"initdb of {data} failed:\n{result.stderr[-2000:]}")
    return True


def postgres_command(stack_dir: Path, host: str, port: int) -> list[str]:
    """The postmaster in the foreground: TCP on `host` only, its socket inside its data dir."""
    data = postgres_data(stack_dir)
    # max_connections: every Airflow component and worker keeps a pool
    parameters = {"listen_addresses": host, "port": port, "unix_socket_directories": data, "max_connections": 200}
    return [*_as_postgres_user(), str(pg_bindir() / "postgres"), "-D", str(data)] + [
        f"--{name}={value}" for name, value in parameters.items()
    ]


def postgres_url(password: str, host: str, port: int, database: str, driver: str = "") -> str:
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return f"{scheme}://{DB_USER}:{password}@{host}:{port}/{database}"


def _until_up(timeout: float, interval: float, errors: type[Exception]):
    """Call again on `errors` every `interval` s until `timeout` s have passed, then raise the last one."""
    import tenacity

    stop, wait = tenacity.stop_after_delay(timeout), tenacity.wait_fixed(interval)
    return tenacity.Retrying(stop=stop, wait=wait, retry=tenacity.retry_if_exception_type(errors), reraise=True)


def wait_for_postgres(password: str, host: str, port: int, timeout: float = 60.0) -> None:
    """Connect until the server accepts connections; create the stack's databases if missing."""
    import psycopg2

    try:
        login = {"host": host, "port": port, "user": DB_USER, "password": password, "dbname": "postgres"}
        connection = _until_up(timeout, 0.3, psycopg2.OperationalError)(psycopg2.connect, **login, connect_timeout=3)
    except psycopg2.OperationalError as error:
        raise ServiceError(f"PostgreSQL on {host}:{port} not accepting connections: {error}") from None
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database")
        present = {row[0] for row in cursor.fetchall()}
        for database in DATABASES:
            if database not in present:
                cursor.execute(f'CREATE DATABASE "{database}"')
    connection.close()


def write_redis_config(stack_dir: Path, host: str, port: int, password: str) -> Path:
    """Redis on `host` with a password, appending every write to disk: queued tasks survive a restart."""
    data = stack_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    config = stack_dir / "redis.conf"
    write_private(
        config,
        f"bind {host}\nport {port}\nrequirepass {password}\nprotected-mode yes\ndir {data}\n"
        'appendonly yes\nappendfsync everysec\nsave ""\ndaemonize no\n',
    )
    return config


def wait_for_redis(host: str, port: int, password: str, timeout: float = 30.0) -> None:
    import redis

    client = redis.Redis(host=host, port=port, password=password, socket_connect_timeout=2)
    try:  # ConnectionError covers BusyLoadingError: Redis still reading its append-only file
        _until_up(timeout, 0.2, redis.exceptions.ConnectionError)(client.ping)
    except redis.exceptions.ConnectionError as error:
        raise ServiceError(f"Redis on {host}:{port} not answering: {error}") from None
