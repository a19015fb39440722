"""Runs whose inputs are wrong or come from elsewhere, end to end with everything real: a bad
setting, a missing raw directory, and a fresh clone importing the public files' layout from a
mirror. None needs a champion, so this module has a stack of its own and runs beside test_e2e."""

import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch import paths
from mmsearch.tools.sample_data import SampleSpec
from tests.e2e.support import FAST, WEAK, dags_test, failures, in_ml_env, run_dag, run_dir_of
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_a_bad_setting_fails_configure_at_once_in_one_line(stack):
    result, log = run_dag(stack, {"epohcs": 5}, "2026-01-04T02:00:00+00:00")
    assert "state=failed" in log
    assert failures(stack, log) == [
        {"task_id": "configure", "reason": "unknown setting 'epohcs' (did you mean 'epochs'?)"}
    ]
    assert "[DAG TEST] starting task_id=data.pull_data" not in log  # nothing else ran, nothing was retried


def test_a_missing_raw_data_dir_fails_pull_data_at_once_naming_it(stack, tmp_path):
    missing = tmp_path / "does-not-exist"
    result, log = run_dag(stack, {**FAST, "raw_data_dir": str(missing)}, "2026-01-04T02:00:00+00:00")
    assert "state=failed" in log
    failed = failures(stack, log)
    assert [f["task_id"] for f in failed] == ["data.pull_data"]  # one try: bad input is not retried
    assert failed[0]["reason"].startswith(f"{missing}: raw_data_dir does not exist")
    assert not run_dir_of(stack, log).exists()  # no run outputs at all


def test_a_fresh_clone_imports_from_a_mirror_and_trains_with_the_sources_in_its_lineage(stack, tmp_path):
    """`make real-data MIRROR=...` in a fresh clone (its command, `mmsearch real-data`), then a run:
    the registered version names each file's URL. Last in this module: it registers a version."""
    from mmsearch.tools.sample_data import generate
    from tests.helpers import MirrorServer, publish

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    upstream, mirror, manifest = tmp_path / "upstream", tmp_path / "mirror", tmp_path / "sources.yaml"
    generate(upstream, SampleSpec(queries=300, products=1600, mean_judgements=16, topics=12, values=3, seed=23))
    publish(mirror, upstream, manifest)
    mmsearch = str(Path(sys.executable).parent / "mmsearch")
    with MirrorServer(mirror) as server:
        imported = subprocess.run(
            [mmsearch, "real-data", "--repo", str(clone), "--manifest", str(manifest), "--base-url", server.url],
            env=stack["env"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert imported.returncode == 0, imported.stderr[-3000:]
        assert not (clone / "data" / "raw.dvc").exists()
        for path in (paths.ESCI_FILE, paths.QUERY_FEATURES_FILE, paths.PRODUCT_FEATURES_FILE):
            assert (clone / "data" / "raw" / f"{path}.dvc").exists()
        # what is checked is the registered version's lineage, not its model: the shortest training
        summary = dags_test(stack, {**WEAK, "dvc_repo": str(clone)}, "2026-01-09T02:00:00+00:00")
    version = summary["registry"]["version"]
    tags = in_ml_env(
        stack,
        f"""
        import json, mlflow
        print(json.dumps(mlflow.MlflowClient().get_model_version("mmsearch-esci", "{version}").tags))
    """,
    )
    assert tags[f"source.{paths.ESCI_FILE}"] == (
        f"{server.url}/amazon-science/esci-data/r1/shopping_queries_dataset/shopping_queries_dataset_examples.parquet"
    )
    assert tags[f"source.{paths.PRODUCT_FEATURES_FILE}"].endswith(
        "/crossingminds/shopping-queries-image-dataset/r1/data/product_features.parquet"
    )
    assert tags[f"dvc_md5.{paths.PRODUCT_FEATURES_FILE}"] and len(tags["fingerprint"]) == 64
