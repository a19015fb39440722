"""The fingerprint: what changes it and what does not."""

from mmsearch import fingerprint
from mmsearch.config import RunConfig

LINEAGE = {"file_md5": {"a.parquet": "1" * 32, "sqid/b.parquet": "2" * 32}}


def test_data_and_model_settings_change_the_fingerprint():
    base = fingerprint.fingerprint(LINEAGE, RunConfig())["fingerprint"]
    assert fingerprint.fingerprint(LINEAGE, RunConfig())["fingerprint"] == base  # deterministic
    other_data = {"file_md5": {**LINEAGE["file_md5"], "a.parquet": "3" * 32}}
    assert fingerprint.fingerprint(other_data, RunConfig())["fingerprint"] != base
    for setting in ({"epochs": 7}, {"learning_rate": 0.01}, {"esci_filter_locale": "es"}, {"seed": 1}):
        assert fingerprint.fingerprint(LINEAGE, RunConfig(**setting))["fingerprint"] != base, setting


def test_operational_settings_do_not():
    base = fingerprint.fingerprint(LINEAGE, RunConfig())["fingerprint"]
    for setting in (
        {"force_retrain": True},
        {"dvc_remote": "s3"},
        {"registry_attempts": 9},
        {"keep_runs": 5},
        {"drift_threshold": 0.8},
        {"transform_batch_rows": 500},
        {"beam_pipeline_args": ("--runner=DirectRunner",)},
    ):
        assert fingerprint.fingerprint(LINEAGE, RunConfig(**setting))["fingerprint"] == base, setting


def test_the_code_version_is_the_commit_and_any_uncommitted_change():
    version = fingerprint.code_version()
    commit = version.split("+")[0]
    assert len(commit) == 40 or commit == "unknown"
    assert "+" not in version or len(version.split("+")[1]) == 12
