"""The Airflow Assets the DAGs produce and consume (imported by the DAG files only).

`mmsearch_raw_data`: the raw ESCI/SQID files, updated when pull_data brings changed files (or an
upstream ingestion DAG says so); mmsearch_training runs on it as well as nightly.
`mmsearch_champion_model`: the registered model's `champion` alias, updated when a run promotes
a new version; mmsearch_rank runs on it.
"""

from __future__ import annotations

from airflow.sdk import Asset

RAW_DATA = Asset(name="mmsearch_raw_data", uri="x-mmsearch://data/raw", group="mmsearch")
CHAMPION_MODEL = Asset(name="mmsearch_champion_model", uri="x-mmsearch://models/champion", group="mmsearch")
