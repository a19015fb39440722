"""Candidates are trained and chosen on validation only: with the test split gone from the
merged and the transformed data, planning, training and selection all still run; only
evaluate needs it."""

import shutil

import pytest

from mmsearch import merge, select, train, transform
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
    best = select.run(trained, tmp_path / "select", cfg)
    assert [row["candidate"] for row in best["selection"]["candidates"]] == sorted(
        range(len(trained)), key=lambda i: -trained[i]["validation"]["macro_f1"]
    )
    assert best["selection"]["rule"].startswith("the fewest parameters within one standard error")
    with pytest.raises(ValueError):  # evaluate is the stage that needs the test split, and finds none
        evaluate.score_test_split(tmp_path / "merged", {})


def _trained(candidate: int, macro_f1: float, parameters: int, rows: int = 400) -> dict:
    return {
        "candidate": candidate,
        "overrides": {},
        "mlflow_run_id": f"run-{candidate}",
        "parameters": parameters,
        "validation_rows": rows,
        "validation": {"macro_f1": macro_f1, "accuracy": 0.8, "micro_f1": 0.8},
    }


def test_the_smaller_model_wins_within_one_standard_error(tmp_path):
    cfg = RunConfig()
    # standard error of 0.8 accuracy on 400 rows: 0.02
    close = select.run([_trained(0, 0.60, 100_000), _trained(1, 0.59, 20)], tmp_path / "a", cfg)
    assert close["candidate"] == 1
    clear = select.run([_trained(0, 0.65, 100_000), _trained(1, 0.59, 20)], tmp_path / "b", cfg)
    assert clear["candidate"] == 0
    # on 40,000 rows the same lead is well past the noise (0.002)
    many = select.run([_trained(0, 0.60, 100_000, 40_000), _trained(1, 0.59, 20, 40_000)], tmp_path / "c", cfg)
    assert many["candidate"] == 0
