"""Candidates are trained and chosen on validation only: with the test split gone from the
merged and the transformed data, planning, training and selection all still run; only
evaluate needs it."""

import shutil

import pytest

from mmsearch import merge, selection, train, transform
from mmsearch.config import RunConfig
from tests.helpers import SMALL

pytestmark = pytest.mark.ml


def test_selection_never_reads_the_test_split(small_raw, tmp_path, monkeypatch):
    from mmsearch import evaluate

    monkeypatch.setenv("MMSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    candidates = ({"batch_size": 64, "hidden_units": 0}, {"batch_size": 64, "projection_dim": 8, "hidden_units": 8})
    cfg = RunConfig(embedding_dim=SMALL.dim, epochs=2, patience=1, candidates=candidates)
    merge.merge(small_raw, tmp_path / "merged", cfg)
    transform.run(tmp_path / "merged", tmp_path / "transform", cfg)
    shutil.rmtree(tmp_path / "merged" / "test")
    shutil.rmtree(transform.examples_dir(tmp_path / "transform", "test"))

    planned = train.plan(cfg, {"dag_id": "test", "run_id": "no-test-split"})
    assert [c["overrides"] for c in planned] == list(candidates)
    trained = [
        train.run(tmp_path / "transform", tmp_path / "train", cfg, c, {"run_id": "no-test-split"}) for c in planned
    ]
    best = selection.run(trained, tmp_path / "select", cfg)
    assert best["candidate"] == max(trained, key=lambda t: (t["validation"]["macro_f1"], -t["candidate"]))["candidate"]
    assert [row["candidate"] for row in best["selection"]["candidates"]] == sorted(
        (t["candidate"] for t in trained), key=lambda i: -trained[i]["validation"]["macro_f1"]
    )
    with pytest.raises(ValueError):  # evaluate is the stage that needs the test split, and finds none
        evaluate.score_test_split(tmp_path / "merged", {})
