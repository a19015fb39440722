"""A person's answer to a promotion the gate granted, when the run's `promotion` is `approve`.

`register` leaves such a version challenger with the tag `approval.status = awaiting`; Airflow's
ApprovalOperator (`model.approve_promotion`) waits for a person in the UI or the REST API. Approve
moves the champion alias (unless it moved since the gate compared, say by a rollback: then nothing
moves and the tags say why); Reject, or no answer within `approval_timeout_hours`, leaves the
version challenger. Either way the version's `approval.*` tags, its model card, the alias's
history and the run's summary say who decided, when and why. With `promotion: auto`, or a gate
that refused, there is nothing to answer and nothing changes here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmsearch import champion as champions
from mmsearch import config, paths
from mmsearch import summary as run_summary

log = logging.getLogger(__name__)

APPROVE = "Approve"  # the ApprovalOperator's options: Approve, Reject


def outcome(answer: dict) -> dict:
    """The ApprovalOperator's result as the tags record it: status, by, at, comment."""
    user = answer.get("responded_by_user") or {}
    timed_out = bool(answer.get("timedout")) or not user
    status = "approved" if answer["chosen_options"] == [APPROVE] else "no answer" if timed_out else "rejected"
    return {
        "status": status,
        "by": user.get("name") or "nobody (the approval timed out)",
        "at": str(answer.get("responded_at") or ""),
        "comment": str((answer.get("params_input") or {}).get("comment") or ""),
    }


def run(registry: dict, answer: dict | None, *, out_dir: Path, cfg: config.RunConfig, tags: dict) -> dict:
    """Act on `answer` (the approval task's result; None when it was skipped) for the version
    `registry` (register's result) describes; return the registry part of the run's summary.
    `out_dir` is the run's own directory, whose summary it completes."""
    import mlflow

    if (registry.get("approval") or {}).get("status") != "awaiting":
        return registry
    if answer is None:
        raise RuntimeError(f"v{registry['version']} awaits approval, but the approval task gave no answer")
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri())
    client = mlflow.MlflowClient()
    name, version = registry["registered_model"], registry["version"]
    decided = outcome(answer)
    promoted = False
    if decided["status"] == "approved":
        current = champions.holder(client, name)
        compared = registry["champion_version"]
        if (str(current.version) if current else None) != compared:
            moved = f"v{current.version}" if current else "nothing"
            decided["status"] = f"approved, not promoted: the champion alias moved to {moved} since the gate compared"
        else:
            why = f"{decided['comment'] or 'approved'} (the gate: {registry['decision']['reason']})"
            champions.move(client, name, version, "approval", decided["by"], why, tags.get("run_id", ""))
            promoted = True
    for key, value in decided.items():
        client.set_model_version_tag(name, version, f"approval.{key}", value)
    card = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version, f"{card}\n**Approval**: {run_summary.approval_line(decided)}.\n")
    holder = champions.holder(client, name)
    aliases = sorted(client.get_model_version(name, version).aliases)
    found = {
        **registry,
        "aliases": aliases,
        "promoted": promoted,
        "approval": decided,
        "champion_version": str(holder.version) if holder else None,
    }
    summary = run_summary.update_registry(out_dir, found)
    print(run_summary.summary_text(summary))  # relayed to the task log
    return found
