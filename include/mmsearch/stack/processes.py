"""The processes the stack started: each in its own session, its PID, start time, log and stop
signal recorded in `$MMSEARCH_HOME/stack/pids.json`; stopped by PID (a reused PID is never
signalled), measured (memory, listening sockets)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

from mmsearch.io import read_json, write_json
from mmsearch.stack.settings import StackError, stack_dir


def pids_file() -> Path:
    return stack_dir() / "pids.json"


def recorded() -> dict:
    return read_json(pids_file()) if pids_file().exists() else {}


def running(entries: dict | None = None) -> dict:
    """The recorded processes still alive with the same start time (so not a reused PID); a zombie
    (exited, not yet reaped by the command that started it) is not alive."""
    import psutil

    alive = {}
    for name, entry in (recorded() if entries is None else entries).items():
        try:
            process = psutil.Process(entry["pid"])
            if process.create_time() == entry["create_time"] and process.status() != psutil.STATUS_ZOMBIE:
                alive[name] = entry
        except psutil.NoSuchProcess:
            pass
    return alive


def start(name: str, command: list[str], env: dict, stop_signal: str = "SIGTERM", backing: bool = False) -> dict:
    """Start one process in its own session, logging to stack/logs/<name>.log; record its PID.
    `backing`: a database, stopped after everything that talks to it."""
    import psutil

    logs = stack_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        streams = {"stdout": log, "stderr": subprocess.STDOUT, "stdin": subprocess.DEVNULL}
        process = subprocess.Popen(command, env=env, **streams, start_new_session=True)
    entry = {
        "pid": process.pid,
        "create_time": psutil.Process(process.pid).create_time(),
        "log": str(log.name),
        "stop_signal": stop_signal,
        "backing": backing,
    }
    write_json(pids_file(), {**recorded(), name: entry})  # `down` can stop a partial stack
    return entry


def forget(name: str) -> None:
    write_json(pids_file(), {k: v for k, v in recorded().items() if k != name})


def _signal_group(entry: dict, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(entry["pid"], signum)


def stop_all(entries: dict, grace_seconds: float = 30.0) -> list[int]:
    """Each process group its own clean-shutdown signal, SIGKILL to what is left after the grace
    period (the whole group: task processes a leader left behind too); the PIDs killed."""
    import psutil

    for entry in entries.values():
        _signal_group(entry, signal.Signals[entry.get("stop_signal", "SIGTERM")])
    processes = []
    for entry in entries.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            processes.append(psutil.Process(entry["pid"]))
    _, alive = psutil.wait_procs(processes, timeout=grace_seconds)
    for entry in entries.values():
        _signal_group(entry, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)  # SIGKILL is sent, not done: return once they are gone
    for name in entries:
        forget(name)
    return [process.pid for process in alive]


def stop(name: str, grace_seconds: float = 30.0) -> None:
    """Stop one recorded process (its whole group) by PID."""
    entry = running().get(name)
    stop_all({name: entry} if entry else {}, grace_seconds)
    forget(name)


def tail(path: Path | str, lines: int = 15) -> str:
    path = Path(path)
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _tree(pid: int) -> list:
    """The process and its descendants; none if it has just exited."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def memory_mb(entries: dict) -> dict:
    """Memory of each running component's process tree, in MB, as proportional set size: a shared
    page counts once over the processes sharing it (Postgres' shared buffers, forked workers)."""
    import psutil

    usage = {}
    for name, entry in entries.items():
        total = 0
        for process in _tree(entry["pid"]):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += process.memory_full_info().pss
        usage[name] = round(total / 2**20)
    return usage


def listening_sockets(entries: dict | None = None) -> list[dict]:
    """Every TCP socket listening in a process the stack started (or one of its children)."""
    import psutil

    found = []
    for name, entry in (running() if entries is None else entries).items():
        for process in _tree(entry["pid"]):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                for sock in process.net_connections(kind="inet"):
                    if sock.status == psutil.CONN_LISTEN:
                        address = {"ip": sock.laddr.ip, "port": sock.laddr.port}
                        found.append({"component": name, "pid": process.pid, **address})
    return found


def check_free(host: str, port: int, variable: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise StackError(f"port {port} on {host} is in use; set {variable} to a free port") from None
