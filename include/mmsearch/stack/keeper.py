"""Keep one stack component running: `restart: always`, as docker-compose gives each service.

`python -m mmsearch.stack.keeper <name> -- <command...>` starts the command in this process's
group and starts it again when it exits on its own (Airflow's scheduler exits when its database
goes away for a moment, e.g. a PostgreSQL restart), waiting 2 s, then longer after quick
repeated exits. SIGTERM or SIGINT is passed on to the command and ends the keeping.
Standard library only: it runs beside every component.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

BACKOFF_SECONDS = (2, 2, 5, 10, 30)
STABLE_SECONDS = 60  # a run this long resets the backoff


def keep(name: str, command: list[str]) -> int:
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    quick_exits = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        code = child.wait()
        if stopping:
            return code
        quick_exits = 0 if time.monotonic() - started > STABLE_SECONDS else quick_exits + 1
        delay = BACKOFF_SECONDS[min(max(quick_exits, 1), len(BACKOFF_SECONDS)) - 1]  # n-th quick exit in a row
        print(f"keeper: {name} exited with {code}; starting it again in {delay} s", file=sys.stderr, flush=True)
        time.sleep(delay)
        if stopping:
            return code


def main(argv: list[str]) -> int:
    name, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: python -m mmsearch.stack.keeper <name> -- <command...>")
    return keep(name, command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
