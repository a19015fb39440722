"""mmsearch_maintenance: trim Airflow's own metadata and task logs, nightly. Orchestration only.

`airflow db clean` (with the database URL the deployment passes as MMSEARCH_AIRFLOW_DB_URL)
deletes DAG runs, task instances, XComs and logs rows older than
MMSEARCH_KEEP_DAYS (default 30); task log files older than that go too. Run outputs under
runs/ are trimmed by mmsearch_training's own `clean_old_runs` task.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

from mmsearch import alerts
from mmsearch.dag_support import default_args

KEEP_DAYS = int(os.environ.get("MMSEARCH_KEEP_DAYS", "30"))
AIRFLOW = Path(sys.executable).parent / "airflow"  # the environment's own CLI: PATH may not have it


@task.bash(execution_timeout=timedelta(minutes=30))
def clean_metadata() -> str:
    # Airflow 3 hides the metadata database from tasks (the runner scrubs its URL); this one task
    # needs it, so the deployment hands it over as MMSEARCH_AIRFLOW_DB_URL (the stack and compose do).
    return (
        'AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${MMSEARCH_AIRFLOW_DB_URL:?the metadata database URL is not set}" '
        f"{AIRFLOW} db clean --yes --skip-archive "
        f"--clean-before-timestamp \"$(date -u -d '-{KEEP_DAYS} days' '+%Y-%m-%dT%H:%M:%S+00:00')\""
    )


@task.bash(execution_timeout=timedelta(minutes=30))
def clean_task_logs() -> str:
    return f'find "${{AIRFLOW_HOME:-.}}/logs" -type f -mtime +{KEEP_DAYS} -print -delete | wc -l'


@dag(
    dag_id="mmsearch_maintenance",
    schedule="30 3 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mmsearch", "maintenance"],
    default_args=default_args(retries=1),
    on_failure_callback=alerts.run_failed,
)
def mmsearch_maintenance():
    clean_metadata() >> clean_task_logs()


mmsearch_maintenance()
