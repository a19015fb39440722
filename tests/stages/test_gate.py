"""The gate: on this run's test split, with a paired bootstrap over its query groups, a new
version is never promoted when a baseline is significantly better; with no champion it is
promoted when no baseline is; over a champion, only when the lower 95 % bound of its difference
from the champion is above min_improvement. The reason says it with the interval."""

import re

import numpy as np
import pytest

from mmsearch.gate import decide
from mmsearch.metrics import bootstrap, classification_metrics, headline, intervals

pytestmark = pytest.mark.ml  # scikit-learn

QUERIES, PER_QUERY = 150, 6  # the bundled sample's test split is about this size


def labels_and_queries(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, size=QUERIES * PER_QUERY, p=[0.1, 0.03, 0.22, 0.65])
    return labels, np.repeat(np.arange(QUERIES), PER_QUERY)


def scorer(labels: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    """Labels right with probability `accuracy`, else another label at random."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(labels)) > accuracy
    predicted = labels.copy()
    predicted[wrong] = (labels[wrong] + rng.integers(1, 4, wrong.sum())) % 4
    return predicted


def scored(accuracies: dict, seed: int = 0) -> tuple[dict, dict]:
    """Headline metrics and the bootstrap's differences (model minus each) for scorers of the given
    accuracies on one test split."""
    labels, queries = labels_and_queries(seed)
    served = {name: scorer(labels, accuracy, seed=i + 1) for i, (name, accuracy) in enumerate(accuracies.items())}
    ranked = {name: (predicted, predicted.astype(float)) for name, predicted in served.items()}
    point = {
        name: headline(classification_metrics(labels, np.eye(4)[predicted], queries, predicted, ranking))
        for name, (predicted, ranking) in ranked.items()
    }
    return point, intervals(point, bootstrap(labels, queries, ranked, 1000, seed=42), reference="model")


def gate(accuracies: dict, **kwargs):
    point, found = scored(accuracies)
    return decide("accuracy", point, found["differences"], **kwargs)


def test_a_challenger_within_noise_of_the_champion_stays_challenger_with_the_interval():
    decision = gate({"model": 0.72, "champion": 0.71, "baseline_clip": 0.60}, champion_version="3")
    assert not decision.promote
    assert re.match(r"accuracy [+-]0\.0\d\d over champion v3 \(95 % CI -0\.\d{3} to \+0\.\d{3}\)", decision.reason)
    assert "lower bound not above min_improvement 0" in decision.reason


def test_a_challenger_significantly_better_than_the_champion_is_promoted():
    decision = gate({"model": 0.80, "champion": 0.65, "baseline_clip": 0.60}, champion_version="3")
    assert decision.promote and "lower bound above min_improvement 0" in decision.reason


def test_min_improvement_raises_the_bar():
    accuracies = {"model": 0.80, "champion": 0.65, "baseline_clip": 0.60}
    assert not gate(accuracies, champion_version="3", min_improvement=0.2).promote


def test_a_model_significantly_worse_than_a_baseline_is_never_promoted():
    for champion in (None, "3"):
        decision = gate({"model": 0.55, "champion": 0.40, "baseline_clip": 0.72}, champion_version=champion)
        assert not decision.promote and decision.champion_version == champion
        assert "is significantly below a baseline: accuracy -0.1" in decision.reason
        assert "over baseline_clip (95 % CI -0." in decision.reason


def test_no_champion_and_no_significant_loss_promotes_even_a_little_below_a_baseline():
    decision = gate({"model": 0.70, "baseline_clip": 0.71, "baseline_majority": 0.40})
    assert decision.promote
    assert decision.reason.startswith("no champion yet; accuracy 0.")
    assert "over baseline_clip (95 % CI -0.0" in decision.reason
    assert decision.reason.endswith("no baseline significantly better")


def test_an_unscorable_champion_keeps_its_alias():
    point, found = scored({"model": 0.99, "baseline_clip": 0.60})
    decision = decide(
        "accuracy", point, found["differences"], "2", "this run's data has no column(s) ['product_text_embedding']"
    )
    assert not decision.promote
    assert decision.reason.startswith("champion v2 could not be scored on this data: ")


def test_the_bootstrap_is_seeded_paired_and_agrees_with_scikit_learn():
    labels, queries = labels_and_queries()
    predicted = scorer(labels, 0.7, seed=1)
    ranked = {"model": (predicted, predicted.astype(float)), "same": (predicted, predicted.astype(float))}
    first = bootstrap(labels, queries, ranked, 1000, seed=7)
    again = bootstrap(labels, queries, ranked, 1000, seed=7)
    for metric in ("accuracy", "macro_f1", "ndcg"):
        np.testing.assert_array_equal(first["model"][metric], again["model"][metric])
        np.testing.assert_array_equal(first["model"][metric], first["same"][metric])  # paired: one draw for all
    point = headline(classification_metrics(labels, np.eye(4)[predicted], queries, predicted, predicted.astype(float)))
    found = intervals({"model": point, "same": point}, first, reference="model")
    for metric in ("accuracy", "macro_f1", "ndcg"):
        low, high = found["intervals"]["model"][metric]
        assert low < point[metric] < high and high - low < 0.2
        assert found["differences"]["same"][metric] == {"difference": 0.0, "low": 0.0, "high": 0.0}
    # the resamples centre on scikit-learn's figures for the whole split
    for metric in ("accuracy", "macro_f1", "ndcg"):
        assert abs(np.mean(first["model"][metric]) - point[metric]) < 0.01
