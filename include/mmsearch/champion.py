"""The `champion` alias and every move of it: the gate's, a person's approval, a rollback.

MLflow keeps only where an alias points now, so each move is also recorded on the registered
model, as a tag `champion_history.<UTC time>` holding the move as JSON (the version it moved to,
the one before, the kind, who, why, the DAG run), and on the version it moved to (`champion.*`
tags). `mmsearch champion history` lists the moves; `mmsearch champion rollback` moves the alias
back to the champion before (or `--to` a version), recorded the same way. The re-ranking service
follows the alias within its poll; the next night's evaluate compares its challenger with
whichever version holds the alias then.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history."
KINDS = ("gate", "approval", "rollback")
# a registered model's tag value is at most 5,000 characters in MLflow's SQL stores
LONGEST_REASON = 2000


class ChampionError(ValueError):
    """A move the registry cannot make as asked (no champion, no such version, nothing to go back to)."""


@dataclass(frozen=True)
class Move:
    at: str
    version: str
    previous: str | None
    kind: str
    by: str
    reason: str
    run_id: str = ""


def holder(client, name: str, alias: str = CHAMPION):
    """The ModelVersion under `alias`, or None (no such model, or no such alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        # an unreachable server is not "no champion": it raises
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def move(client, name: str, version: str, kind: str, by: str, reason: str, run_id: str = "") -> Move:
    """Point `champion` at `version` and record the move on the model and on the version."""
    assert kind in KINDS, kind
    before = holder(client, name)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    at = datetime.now(UTC).isoformat(timespec="microseconds")
    done = Move(at, str(version), str(before.version) if before else None, kind, by, reason[:LONGEST_REASON], run_id)
    client.set_registered_model_tag(name, HISTORY_TAG + at.replace("+00:00", "Z"), json.dumps(asdict(done)))
    for key, value in {"kind": kind, "by": by, "at": at, "reason": done.reason}.items():
        client.set_model_version_tag(name, str(version), f"champion.{key}", value)
    log.info("champion of %s: v%s -> v%s (%s by %s): %s", name, done.previous, version, kind, by, reason)
    return done


def history(client, name: str) -> list[Move]:
    """Every recorded move of the alias, oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return [Move(**json.loads(tags[key])) for key in sorted(tags) if key.startswith(HISTORY_TAG)]


def rollback(client, name: str, by: str, reason: str, to: str | None = None) -> Move:
    """Move the alias back: to `to`, or to the champion the current one replaced."""
    current = holder(client, name)
    if current is None:
        raise ChampionError(f"{name} has no champion to roll back")
    if to is None:
        replaced = [m.previous for m in history(client, name) if m.version == str(current.version) and m.previous]
        if not replaced:
            raise ChampionError(
                f"no champion of {name} is recorded before v{current.version}: "
                "name the version to go back to (--to VERSION, make rollback TO=VERSION)"
            )
        to = replaced[-1]
    if str(to) == str(current.version):
        raise ChampionError(f"v{to} is the champion already")
    _existing(client, name, str(to))
    return move(client, name, str(to), "rollback", by, reason)


def _existing(client, name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise ChampionError(f"{name} has no version {version}") from None


def history_table(moves: list[Move]) -> str:
    """The moves as a person reads them, newest last."""
    if not moves:
        return "no move of the champion alias is recorded"
    rows = [("when (UTC)", "version", "from", "kind", "by", "why")]
    for m in moves:
        when = m.at.replace("T", " ")[:19]
        rows.append((when, f"v{m.version}", f"v{m.previous}" if m.previous else "-", m.kind, m.by, m.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5] for row in rows)
