"""What every DAG's tasks share on the Airflow side: credentials masked in their logs, a failed
task's one-line reason recorded for `make run`, and no retry of an error a retry cannot heal."""

from __future__ import annotations

import os
from datetime import timedelta
from urllib.parse import urlsplit

from airflow.sdk.definitions.retry_policy import RetryDecision, RetryPolicy

from mmsearch import paths, run_context
from mmsearch.io import read_json, write_json


def mask_credentials(context) -> None:
    """Mask credentials in the task's log, the ML tasks' relayed output included."""
    from airflow.sdk.log import mask_secret

    for name in paths.SECRET_ENV_VARS:
        if os.environ.get(name):
            mask_secret(os.environ[name], name)
    for name in paths.SECRET_URL_ENV_VARS:
        password = urlsplit(os.environ.get(name, "")).password
        if password:
            mask_secret(password, name)


def record_failure(context) -> None:
    """The failed task and its one-line reason, for `make run` to end with."""
    path = run_context.failures_file(context["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    failed = read_json(path)["failed"] if path.exists() else []
    reason = run_context.failure_reason(context.get("exception") or "")
    failed.append({"task_id": context["ti"].task_id, "reason": reason})
    write_json(path, {"failed": failed})


class FailOnceWhenRetryCannotHeal(RetryPolicy):
    """Bad input, a bad setting, refused credentials: fail at once. Anything else (a server away,
    a worker killed) is retried as the task's `retries` say."""

    def evaluate(self, exception, try_number, max_tries, context=None) -> RetryDecision:
        if run_context.cannot_heal(exception):
            return RetryDecision.fail("the same input fails the same way: not retried")
        return RetryDecision.default()

    def serialize(self) -> dict:
        return {"__type": type(self).__name__}


def default_args(retries: int = 2) -> dict:
    """Every DAG's task defaults: retries with backoff for what can heal, none for what cannot."""
    return {
        "owner": "mmsearch",
        "retries": retries,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "retry_policy": FailOnceWhenRetryCannotHeal(),
        "pre_execute": mask_credentials,
        "on_failure_callback": record_failure,
    }
