"""Errors, atomic output directories, small JSON manifests and text tables shared by the stages."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path


class DataError(ValueError):
    """Bad input: the message names the file, the column and the problem, on one line."""

    def __init__(self, path, problem: str, column: str | None = None, rows: Iterable | None = None):
        text = f"{path}" + (f": column '{column}'" if column else "") + f": {problem}"
        rows = list(rows or [])
        if rows:
            more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
            text += f" (e.g. {', '.join(str(r) for r in rows[:5])}{more})"
        super().__init__(text)
        self.path, self.column, self.problem = str(path), column, problem


class RegistryError(RuntimeError):
    """The MLflow tracking server could not be reached; nothing was promoted."""


class CredentialsError(RegistryError):
    """MLflow refused the credentials; trying them again cannot help."""


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `final`; rename it into place on success.

    A killed or failing stage leaves only a `.tmp-*` directory that no later stage
    reads; an existing `final` (a retry of the same run) is replaced only once the
    new output is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def aligned_columns(rows: list, gap: str = "  ") -> list[str]:
    """Rows of cells (strings) as lines of left-aligned columns, `gap` between them, no trailing spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [gap.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def with_backoff(attempts: int, wait_seconds: float, longest: float, retry, what: str):
    """tenacity's Retrying with exponential backoff, each failed try logged: `what (attempt N): error`."""
    import logging

    import tenacity

    def warn(state) -> None:
        first_line = str(state.outcome.exception()).splitlines()[0][:300]
        logging.getLogger("mmsearch").warning("%s (attempt %d): %s", what, state.attempt_number, first_line)

    wait = tenacity.wait_exponential(multiplier=wait_seconds, max=longest)
    stop = tenacity.stop_after_attempt(max(1, attempts))
    return tenacity.Retrying(stop=stop, wait=wait, retry=retry, before_sleep=warn, reraise=True)


# TensorFlow's native start-up lines on a machine without a GPU or the CPU features its wheel
# skips: absl writes them to fd 2 before any log level applies (TF_CPP_MIN_LOG_LEVEL does not
# hide them), and they read as errors ("E0000 ... failed call to cuInit") in a healthy task.
NATIVE_NOISE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog|[IWE]0000 .*(cuda|cuInit|cpu_feature_guard|oneDNN)"
    rb"|To enable the following instructions|.*oneDNN custom operations are on"
)


def filter_native_stderr() -> None:
    """Drop NATIVE_NOISE from everything this process writes to fd 2 (C++ included), passing the
    rest on at once; at exit the filter drains, so no last line (a traceback) is lost."""
    import atexit
    import sys
    import threading

    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source, os.fdopen(original, "wb", buffering=0) as sink:
            for line in source:
                if not NATIVE_NOISE.match(line):
                    sink.write(line)

    pumping = threading.Thread(target=pump, name="native-stderr-filter", daemon=True)
    pumping.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer closes: the pump reads to its end
        pumping.join(timeout=5)

    atexit.register(drain)


def end_without_teardown(status: int) -> None:
    """End a process whose outputs are written: flush what it printed and logged, then leave
    without the interpreter's teardown, which takes a second or more once TensorFlow is loaded
    (and in which a process that ran Beam can crash after writing everything)."""
    import logging
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def end_without_teardown_at_exit() -> None:
    """The same for an external-python task's process, which Airflow's script ends after writing
    the task's result: registered before any other exit handler, this runs after all of them
    (MLflow's, the stderr filter's drain), and only when the process is not ending on an error."""
    import atexit
    import sys

    def at_exit() -> None:
        if getattr(sys, "last_value", None) is None:  # set when an uncaught exception ends the script
            end_without_teardown(0)

    atexit.register(at_exit)


def log_to_stderr() -> None:
    """Show mmsearch's INFO lines in a task's log (an external-python task has no logging set up),
    without TensorFlow's native start-up noise."""
    import logging
    import sys

    filter_native_stderr()
    logger = logging.getLogger("mmsearch")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    # not to the root logger too: a library that calls logging.basicConfig() (one does, during
    # training) would print every line a second time in its own format
    logger.propagate = False
