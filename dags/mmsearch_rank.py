"""mmsearch_rank: re-rank the working set whenever a new champion is registered. Orchestration only.

Scheduled on the champion-model asset that mmsearch_training's `announce` task updates; the
ranking itself is include/mmsearch/stages/rank.py, run in the ML environment.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, get_current_context, task

from mmsearch import alerts, paths
from mmsearch.assets import CHAMPION_MODEL
from mmsearch.dag_support import default_args


@task
def configure() -> dict:
    """This run's settings (the defaults: ranking has no params), output directory and MLflow tags."""
    from mmsearch.config import RunConfig
    from mmsearch.paths import run_dir_for

    dag_run = get_current_context()["dag_run"]
    tags = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id}
    return {"config": RunConfig().as_dict(), "run_dir": str(run_dir_for(dag_run.run_id)), "tags": tags}


@task.external_python(python=paths.ml_python(), expect_airflow=False, execution_timeout=timedelta(minutes=60))
def rank(settings: dict) -> dict:
    """Score every working-set pair with the champion; write the ranked parquet; log its nDCG."""
    from mmsearch.run_context import stage_task
    from mmsearch.stages import rank as stage

    with stage_task(settings) as run:
        return stage.run(out_dir=run.out("rank"), cfg=run.cfg, tags=run.tags)


@dag(
    dag_id="mmsearch_rank",
    schedule=[CHAMPION_MODEL],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mmsearch", "ranking"],
    default_args=default_args(retries=1),
    on_failure_callback=alerts.run_failed,
)
def mmsearch_rank():
    rank(configure())


mmsearch_rank()
