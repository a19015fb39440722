"""`make run`'s log goes beside the run's outputs, failed or not, and never into an earlier run's."""

from datetime import UTC, datetime, timedelta

from mmsearch import paths
from mmsearch.tools.run_dag import LOG_NAME, _keep_with_run

STARTED = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)


def _log(tmp_path):
    log = tmp_path / "logs" / "dags-test-20260101T020000.log"
    log.parent.mkdir()
    log.write_text("[DAG TEST] end task")
    return log


def test_a_run_that_wrote_nothing_still_gets_its_log_in_its_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSEARCH_HOME", str(tmp_path))
    run = {"run_id": "manual__2026-01-01T02:00:05+00:00", "run_after": str(STARTED + timedelta(seconds=5))}
    kept = _keep_with_run(_log(tmp_path), run, STARTED)
    assert kept == paths.run_dir_for(run["run_id"]) / LOG_NAME and kept.read_text() == "[DAG TEST] end task"


def test_an_earlier_run_is_not_given_this_log(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSEARCH_HOME", str(tmp_path))
    earlier = {"run_id": "manual__2025-12-31T02:00:00+00:00", "run_after": str(STARTED - timedelta(days=1))}
    log = _log(tmp_path)
    assert _keep_with_run(log, earlier, STARTED) == log and not paths.run_dir_for(earlier["run_id"]).exists()
