"""Messages to the team through Airflow's notifiers: every DAG's failed run, the training DAG's
champion changes, and promotions waiting for a person's approval.

They go through the Airflow Connection `mmsearch_alerts`, an SMTP server (host, port, login,
password; `disable_tls` / `disable_ssl` in its extra as Airflow's SMTP connection has them) whose
extra also names the recipients (`to`, comma-separated) and the sender (`from_email`). Without that
connection nothing is sent and the task log says so: `make run` and a stack nobody configured stay
quiet. E.g. in the environment of every Airflow process:

    AIRFLOW_CONN_MMSEARCH_ALERTS='{"conn_type": "smtp", "host": "smtp.example.com", "port": 587,
      "login": "airflow", "password": "...", "extra": {"to": "ml-team@example.com",
      "from_email": "airflow@example.com"}}'
"""

from __future__ import annotations

import html
import logging

from airflow.sdk.bases.notifier import BaseNotifier

from mmsearch import run_context
from mmsearch.io import read_json

log = logging.getLogger(__name__)

CONNECTION = "mmsearch_alerts"


def _connection():
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(CONNECTION)
    except AirflowNotFoundException:
        return None


def send(subject: str, lines: list[str], context) -> bool:
    """One message through the `mmsearch_alerts` connection; False (and a log line) without one."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    connection = _connection()
    if connection is None:
        log.info("no Airflow connection %r: not sent: %s", CONNECTION, subject)
        return False
    extra = connection.extra_dejson
    recipients = [address.strip() for address in str(extra.get("to", "")).split(",") if address.strip()]
    if not recipients:
        raise ValueError(f"the Airflow connection {CONNECTION!r} names no recipients: set `to` in its extra")
    body = "<pre>\n" + html.escape("\n".join(lines)) + "\n</pre>\n"  # the lines as written: tables stay aligned
    notifier = SmtpNotifier(
        to=recipients, from_email=extra.get("from_email"), subject=subject, html_content=body, smtp_conn_id=CONNECTION
    )
    notifier.notify(context)
    log.info("sent to %s: %s", ", ".join(recipients), subject)
    return True


def _failed_tasks(context) -> list[dict]:
    """The run's failed tasks with their one-line reasons, as the task callbacks recorded them."""
    path = run_context.failures_file(context["run_id"])
    if path.exists():
        return read_json(path)["failed"]
    ti = context.get("ti")
    return [{"task_id": ti.task_id if ti else "(unknown)", "reason": context.get("reason") or "see the log"}]


class RunFailed(BaseNotifier):
    """Every DAG's `on_failure_callback`: the DAG, the run, each failed task with its one-line
    reason, and the link to the failing task's log. One message per failed run."""

    def notify(self, context) -> None:
        dag_id, run_id, ti = context["dag"].dag_id, context["run_id"], context.get("ti")
        failed = _failed_tasks(context)
        tasks = ", ".join(dict.fromkeys(item["task_id"] for item in failed))
        lines = [f"DAG {dag_id}, run {run_id}: failed at {tasks}."]
        lines += [f"{item['task_id']}: {item['reason']}" for item in failed]
        lines.append(f"log: {ti.log_url}" if ti else "log: the run's page in the Airflow UI")
        send(f"[mmsearch] {dag_id} failed at {tasks}", lines, context)


class PromotionAwaited(BaseNotifier):
    """The approval task's notifier: the gate granted a promotion, a person is asked to answer."""

    def notify(self, context) -> None:
        from airflow.providers.standard.operators.hitl import HITLOperator

        task = context["task"]
        link = HITLOperator.generate_link_to_ui_from_context(context=context)
        send(f"[mmsearch] {task.subject}", [*task.body.splitlines(), f"answer here: {link}"], context)


def champion_changed(context, registry: dict) -> bool:
    """The training DAG's message when its run moved the champion alias."""
    name, version, before = registry["registered_model"], registry["version"], registry["decision"]["champion_version"]
    approval = registry.get("approval") or {}
    how = f"approved by {approval['by']}" if approval.get("status") == "approved" else "promoted by the gate"
    lines = [
        f"{name} v{version} is the champion{f' in place of v{before}' if before else ''}, {how} "
        f"in run {context['run_id']} of {context['dag'].dag_id}.",
        f"The gate: {registry['decision']['reason']}",
        "The re-ranking service follows the alias at its next poll; `make rollback REASON=...` moves it back.",
    ]
    return send(f"[mmsearch] {name} v{version} is the champion", lines, context)


run_failed = RunFailed()
