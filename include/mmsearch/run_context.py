"""What every task does around its stage, in either environment: the run's configuration,
directory and MLflow tags from `configure`'s output; the task log; and errors a retry cannot
heal, marked so that Airflow fails the task once instead of trying the same input again."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmsearch import config, paths
from mmsearch.io import CredentialsError, DataError, end_without_teardown_at_exit, log_to_stderr

# The same input, setting or password fails the same way on every try.
CANNOT_HEAL = (config.ConfigError, DataError, CredentialsError)
CANNOT_HEAL_NAMES = tuple(f"{error.__name__}: " for error in CANNOT_HEAL)
# Set by Airflow's script for an external-python task: this process is that script.
EXTERNAL_PYTHON_SCRIPT = "PYTHON_OPERATORS_VIRTUAL_ENV_MODE"
# How Airflow words an external-python task's failure; the child's message follows on the next line.
CHILD_FAILED = "Process returned non-zero exit status"


class CannotHeal(RuntimeError):
    """One of CANNOT_HEAL raised in an ML task's process: `<ErrorName>: <message>`, so that the
    Airflow side, which sees only this text, can tell it apart."""


@dataclass(frozen=True)
class RunContext:
    cfg: config.RunConfig
    run_dir: Path
    tags: dict = field(default_factory=dict)

    def out(self, stage: str) -> Path:
        """The stage's output directory in this run's directory."""
        return self.run_dir / stage


@contextlib.contextmanager
def stage_task(settings: dict, ml_env: bool = True) -> Iterator[RunContext]:
    """The body of a task: `with stage_task(settings) as run: return stage.run(..., run.out("x"), run.cfg)`.
    In the ML environment (`ml_env`), mmsearch's log lines go to the task log and an error that
    cannot heal crosses the process boundary as CannotHeal."""
    if ml_env:
        if os.environ.get(EXTERNAL_PYTHON_SCRIPT) == "1":
            end_without_teardown_at_exit()  # first, so that it runs after every other exit handler
        log_to_stderr()
    context = RunContext(config.RunConfig.from_mapping(settings["config"]), Path(settings["run_dir"]), settings["tags"])
    try:
        yield context
    except CANNOT_HEAL as error:
        if not ml_env:
            raise
        raise CannotHeal(f"{type(error).__name__}: {error}") from error


def _child_message(exception: BaseException) -> str:
    lines = [line for line in str(exception).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 and lines[0].startswith(CHILD_FAILED) else ""


def cannot_heal(exception: BaseException) -> bool:
    """True for an error that a retry meets again: raised in the task's process, or relayed from
    an ML task's."""
    return isinstance(exception, (CannotHeal, *CANNOT_HEAL)) or _child_message(exception).startswith(CANNOT_HEAL_NAMES)


def failure_reason(exception: BaseException) -> str:
    """The one line a failed task is remembered by: the error's message, an ML task's included
    (without Airflow's first line or the CannotHeal error name)."""
    message = _child_message(exception) or next((s for s in str(exception).splitlines() if s.strip()), "")
    for name in CANNOT_HEAL_NAMES:
        message = message.removeprefix(name)
    return message[:500] or "unknown"


def failures_file(run_id: str) -> Path:
    """Where the DAGs' failure callback records each failed task's one-line reason."""
    return paths.mmsearch_home() / "failures" / f"{paths.run_dir_for(run_id).name}.json"
