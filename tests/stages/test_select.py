"""Candidates are trained and chosen on validation only: with the test split gone from the
merged and the transformed data, planning, training and selection all still run; only
evaluate needs it."""

import shutil

import pytest

from mmsearch.config import DEFAULT_CANDIDATES, RunConfig
from mmsearch.stages import candidates, merge, select, train, transform
from mmsearch.tools.sample_data import SampleSpec, generate
from tests.helpers import SMALL

pytestmark = pytest.mark.ml


def test_selection_never_reads_the_test_split(small_raw, tmp_path, monkeypatch):
    from mmsearch.stages import evaluate

    monkeypatch.setenv("MMSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = ({"batch_size": 64, "hidden_units": 0}, {"batch_size": 64, "projection_dim": 8, "hidden_units": 8})
    cfg = RunConfig(embedding_dim=SMALL.dim, epochs=2, patience=1, candidates=overrides)
    merge.merge(small_raw, tmp_path / "merged", cfg)
    transform.run(tmp_path / "merged", out_dir=tmp_path / "transform", cfg=cfg, tags={})
    shutil.rmtree(tmp_path / "merged" / "test")
    shutil.rmtree(transform.examples_dir(tmp_path / "transform", "test"))

    tags = {"dag_id": "test", "run_id": "no-test-split"}
    planned = candidates.run(out_dir=tmp_path / "candidates", cfg=cfg, tags=tags)
    assert [c["overrides"] for c in planned] == list(overrides)
    trained = [train.run(tmp_path / "transform", c, out_dir=tmp_path / "train", cfg=cfg, tags=tags) for c in planned]
    best = select.run(trained, out_dir=tmp_path / "select", cfg=cfg, tags={})
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
    close = select.run([_trained(0, 0.60, 100_000), _trained(1, 0.59, 20)], out_dir=tmp_path / "a", cfg=cfg, tags={})
    assert close["candidate"] == 1
    clear = select.run([_trained(0, 0.65, 100_000), _trained(1, 0.59, 20)], out_dir=tmp_path / "b", cfg=cfg, tags={})
    assert clear["candidate"] == 0
    # on 40,000 rows the same lead is well past the noise (0.002)
    many = select.run(
        [_trained(0, 0.60, 100_000, 40_000), _trained(1, 0.59, 20, 40_000)], out_dir=tmp_path / "c", cfg=cfg, tags={}
    )
    assert many["candidate"] == 0


# Two worlds of the bundled generator at the same sizes, with little label noise so that what
# the structure allows shows: four product types of one two-valued attribute, which a few
# whitened directions hold; forty types with three four-valued attributes, whose substitutes
# (another value of an attribute the query named) and complements need more of them.
SIMPLE = SampleSpec(queries=300, products=2000, mean_judgements=16, topics=4, attributes=1, values=2, brands=4)
RICH = SampleSpec(queries=300, products=2000, mean_judgements=16, topics=40, attributes=3, values=4, brands=8)


@pytest.mark.parametrize(("world", "chosen"), [(SIMPLE, 4), (RICH, 32)], ids=["simple", "rich"])
def test_validation_picks_a_wider_representation_only_where_structure_needs_it(world, chosen, tmp_path, monkeypatch):
    monkeypatch.setenv("MMSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = SampleSpec(**{**world.__dict__, "label_noise": 0.05, "dim": 64, "seed": 3})
    generate(tmp_path / "raw", spec)
    # the default candidates' settings at two widths, on a schedule of their own: 8 epochs of the
    # run's 50 (batches of 128: a few thousand judgements)
    widths = tuple({**DEFAULT_CANDIDATES[0], "batch_size": 128, "components": width, "epochs": 8} for width in (4, 32))
    cfg = RunConfig(embedding_dim=spec.dim, patience=3, steps_per_epoch=100, candidates=widths)
    merge.merge(tmp_path / "raw", tmp_path / "merged", cfg)
    transform.run(tmp_path / "merged", out_dir=tmp_path / "transform", cfg=cfg, tags={})
    tags = {"dag_id": "test", "run_id": f"width-{chosen}"}
    planned = candidates.run(out_dir=tmp_path / "candidates", cfg=cfg, tags=tags)
    trained = [train.run(tmp_path / "transform", c, out_dir=tmp_path / "train", cfg=cfg, tags=tags) for c in planned]
    best = select.run(trained, out_dir=tmp_path / "select", cfg=cfg, tags={})
    assert best["components"] == chosen, best["selection"]["candidates"]
    assert max(t["epochs_run"] for t in trained) <= 8
