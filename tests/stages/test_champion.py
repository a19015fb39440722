"""The champion alias and its history, on a real MLflow registry (SQLite): the gate's move, a
person's answer to a promotion (promote), a rollback with its reason, and the history listing
every move; what cannot be done is refused in one line."""

import json
import os
import subprocess
import sys

import pytest

from mmsearch import champion as champions
from mmsearch.summary import SUMMARY

pytestmark = pytest.mark.ml

NAME = "mmsearch-esci"


@pytest.fixture
def client(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    registry = mlflow.MlflowClient()
    registry.create_registered_model(NAME)
    for _ in range(3):
        registry.create_model_version(NAME, source=str(tmp_path / "model"), run_id=None)
    return registry


def test_moves_are_recorded_and_a_rollback_returns_to_the_champion_before(client):
    champions.move(client, NAME, "1", "gate", "the gate of mmsearch_training", "no champion yet", "run-1")
    champions.move(client, NAME, "2", "approval", "alice", "fresher data (the gate: +0.03)", "run-2")
    moved = champions.rollback(client, NAME, "bob", "v2 ranks cases above phones")
    assert (moved.version, moved.previous, moved.kind, moved.by) == ("1", "2", "rollback", "bob")
    assert str(champions.holder(client, NAME).version) == "1"
    moves = champions.history(client, NAME)
    assert [(m.version, m.previous, m.kind) for m in moves] == [
        ("1", None, "gate"),
        ("2", "1", "approval"),
        ("1", "2", "rollback"),
    ]
    assert moves[1].by == "alice" and moves[1].run_id == "run-2"
    tags = client.get_model_version(NAME, "1").tags
    assert tags["champion.kind"] == "rollback" and tags["champion.reason"] == "v2 ranks cases above phones"
    table = champions.history_table(moves).splitlines()
    assert table[0].split()[:3] == ["when", "(UTC)", "version"] and "v2 ranks cases above phones" in table[-1]


@pytest.mark.parametrize(
    "setup, to, message",
    [
        ([], None, "mmsearch-esci has no champion to roll back"),
        (["1"], None, "no champion of mmsearch-esci is recorded before v1: name the version to go back to"),
        (["1"], "1", "v1 is the champion already"),
        (["1"], "9", "mmsearch-esci has no version 9"),
    ],
    ids=["no-champion", "nothing-before", "same-version", "no-such-version"],
)
def test_a_rollback_that_cannot_be_done_is_refused_and_moves_nothing(client, setup, to, message):
    for version in setup:
        champions.move(client, NAME, version, "gate", "the gate", "first")
    with pytest.raises(champions.ChampionError, match=message):
        champions.rollback(client, NAME, "bob", "why not", to)
    assert len(champions.history(client, NAME)) == len(setup)


def _awaiting(run_dir, champion_version=None) -> dict:
    registry = {
        "registered_model": NAME,
        "version": "3",
        "aliases": ["challenger"],
        "promotion_metric": "macro_f1",
        "decision": {"promote": True, "reason": "no champion yet; macro_f1 0.5", "champion_version": champion_version},
        "promoted": False,
        "approval": {"status": "awaiting", "timeout_hours": 24.0},
        "champion_version": champion_version,
        "lineage_run_dirs": [],
    }
    metrics = {"accuracy": 0.8, "macro_f1": 0.5, "micro_f1": 0.8, "ndcg": 0.9}
    summary = {
        "run_id": "run-3",
        "run_dir": str(run_dir),
        "registry": registry,
        "metrics": {"model": metrics},
        "intervals": {},
        "test_rows": 10,
        "model": {"candidate": 0, "overrides": {}, "epochs_run": 3, "best_epoch": 2, "validation": metrics},
        "candidates": [{}],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SUMMARY).write_text(json.dumps(summary))
    return registry


def _answer(option: str, user: str | None, comment: str = "", timedout: bool = False) -> dict:
    responder = {"id": user, "name": user} if user else None
    params = {"comment": comment}
    return {"chosen_options": [option], "params_input": params, "responded_by_user": responder, "timedout": timedout}


@pytest.mark.parametrize(
    "answer, status, champion",
    [
        (_answer("Approve", "alice", "looks right on the card"), "approved", "3"),
        (_answer("Reject", "bob", "wait for the new catalogue"), "rejected", None),
        (_answer("Reject", None, timedout=True), "no answer", None),
    ],
    ids=["approved", "rejected", "timed-out"],
)
def test_a_persons_answer_is_acted_on_and_recorded(client, tmp_path, answer, status, champion):
    from mmsearch.stages import promote
    from tests.helpers import small_config

    run_dir = tmp_path / "run"
    registry = promote.run(_awaiting(run_dir), answer, out_dir=run_dir, cfg=small_config(), tags={"run_id": "run-3"})
    assert registry["approval"]["status"] == status and registry["champion_version"] == champion
    assert registry["promoted"] is (status == "approved")
    tags = client.get_model_version(NAME, "3").tags
    assert tags["approval.status"] == status and tags["approval.by"] == registry["approval"]["by"]
    assert "**Approval**: approval: " + status in client.get_model_version(NAME, "3").description
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["registry"]["approval"]["status"] == status
    if status == "approved":
        assert champions.history(client, NAME)[-1].by == "alice"
        assert "looks right on the card (the gate: no champion yet" in champions.history(client, NAME)[-1].reason


def test_an_approval_after_the_alias_moved_promotes_nothing(client, tmp_path):
    from mmsearch.stages import promote
    from tests.helpers import small_config

    run_dir = tmp_path / "run"
    registry = _awaiting(run_dir)  # the gate compared with no champion
    champions.move(client, NAME, "1", "rollback", "carol", "meanwhile")
    found = promote.run(registry, _answer("Approve", "alice"), out_dir=run_dir, cfg=small_config(), tags={})
    assert not found["promoted"] and found["champion_version"] == "1"
    assert found["approval"]["status"].startswith("approved, not promoted: the champion alias moved to v1")


def test_the_champion_command_lists_the_history_and_rolls_back(client, tmp_path):
    champions.move(client, NAME, "1", "gate", "the gate", "first")
    champions.move(client, NAME, "2", "gate", "the gate", "second")
    env = {**os.environ, "MMSEARCH_HOME": str(tmp_path / "home")}
    mmsearch = [sys.executable, "-m", "mmsearch.cli", "champion"]
    result = subprocess.run([*mmsearch, "rollback", "--by", "dave"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "say why: --reason TEXT" in result.stderr
    result = subprocess.run(
        [*mmsearch, "rollback", "--reason", "bad on traffic", "--by", "dave"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "v2 -> v1 (rollback by dave at " in result.stdout and "bad on traffic" in result.stdout
    listed = subprocess.run([*mmsearch, "history", "--json"], env=env, capture_output=True, text=True)
    assert [m["kind"] for m in json.loads(listed.stdout)] == ["gate", "gate", "rollback"]
