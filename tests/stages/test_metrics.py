"""The metrics: nDCG with ESCI gains by hand and against scikit-learn, classification metrics, calibration,
the decision rule fitted on validation."""

import numpy as np
import pytest

from mmsearch.metrics import (
    GAIN_BY_ID,
    MAX_ACCURACY_DROP,
    apply_decision_rule,
    classification_metrics,
    expected_calibration_error,
    fit_decision_rule,
    mean_ndcg,
)

pytestmark = pytest.mark.ml


def test_gains_are_esci_gains_in_label_id_order():
    assert GAIN_BY_ID.tolist() == [0.0, 0.01, 0.1, 1.0]  # I, C, S, E


def test_ndcg_hand_worked_example():
    # one query: an E, an S and an I; the model ranks the S first, then the E, then the I
    query = np.array(["q", "q", "q"])
    gains = np.array([1.0, 0.1, 0.0])
    scores = np.array([0.2, 0.9, 0.1])
    dcg = 0.1 / np.log2(2) + 1.0 / np.log2(3) + 0.0 / np.log2(4)
    ideal = 1.0 / np.log2(2) + 0.1 / np.log2(3)
    value, counted = mean_ndcg(query, gains, scores)
    assert counted == 1
    assert value == pytest.approx(dcg / ideal) == pytest.approx(0.687550, abs=1e-6)


def test_ndcg_averages_sklearn_per_query_and_skips_queries_without_ranking_information():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    queries = np.repeat(np.array(["a", "b", "c", "d", "e"]), [5, 3, 4, 1, 3])
    gains = rng.choice([1.0, 0.1, 0.01, 0.0], len(queries))
    gains[queries == "e"] = 0.0  # no relevant product: skipped
    scores = rng.random(len(queries))
    order = rng.permutation(len(queries))  # rows in any order
    value, counted = mean_ndcg(queries[order], gains[order], scores[order])
    expected = [ndcg_score([gains[queries == q]], [scores[queries == q]]) for q in "abc"]
    assert counted == 3  # d has one product, e none relevant
    assert value == pytest.approx(np.mean(expected))


def test_classification_metrics_perfect_and_confused():
    labels = np.array([3, 3, 2, 1, 0, 3])
    perfect = np.eye(4)[labels]
    metrics = classification_metrics(labels, perfect, np.array(["q"] * 6))
    assert metrics["accuracy"] == metrics["macro_f1"] == metrics["micro_f1"] == 1.0
    assert metrics["ndcg"] == pytest.approx(1.0)
    assert metrics["confusion_matrix"]["labels"] == ["I", "C", "S", "E"]
    assert np.trace(metrics["confusion_matrix"]["matrix"]) == 6

    always_e = np.eye(4)[[3] * 6]
    metrics = classification_metrics(labels, always_e, np.array(["q"] * 6))
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["per_class"]["E"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 3}
    assert metrics["per_class"]["C"]["f1"] == 0.0
    assert metrics["macro_f1"] == pytest.approx((2 / 3) / 4)


def test_served_labels_and_ranking_scores_override_argmax_and_expected_gain():
    labels = np.array([3, 1, 0])
    probabilities = np.array([[0.1, 0.1, 0.1, 0.7], [0.5, 0.3, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1]])
    served = np.array([3, 1, 0])  # a decision rule that picks the rare C in row 2
    assert classification_metrics(labels, probabilities, np.array(["q"] * 3))["accuracy"] == pytest.approx(2 / 3)
    assert classification_metrics(labels, probabilities, np.array(["q"] * 3), served)["accuracy"] == 1.0
    reversed_ranking = classification_metrics(labels, probabilities, np.array(["q"] * 3), served, np.array([0, 1, 2]))
    assert reversed_ranking["ndcg"] < 1.0


def test_expected_calibration_error_by_hand():
    # two rows at confidence 0.9 (one right), two at 0.6 (both right): |0.5-0.9|*2/4 + |1.0-0.6|*2/4
    probabilities = np.array([[0.9, 0.1, 0, 0], [0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.6, 0.4, 0, 0]])
    labels = np.array([0, 1, 0, 0])
    assert expected_calibration_error(labels, probabilities)["ece"] == pytest.approx(0.4)
    perfect = np.eye(4)[[0, 1, 2, 3]]
    assert expected_calibration_error(np.arange(4), perfect)["ece"] == pytest.approx(0.0)


def test_decision_rule_raises_macro_f1_within_the_accuracy_budget():
    rng = np.random.default_rng(0)
    labels = rng.choice(4, 4000, p=[0.10, 0.03, 0.22, 0.65])
    # a calibrated-ish model that never puts the rare C first: argmax misses every C
    probabilities = np.full((4000, 4), 0.1)
    probabilities[np.arange(4000), labels] += rng.uniform(0.0, 0.5, 4000)
    probabilities[:, 3] += 0.25
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    argmax = classification_metrics(labels, probabilities, np.arange(4000))
    rule = fit_decision_rule(labels, probabilities)
    served = apply_decision_rule(probabilities, rule["class_weights"])
    fitted = classification_metrics(labels, probabilities, np.arange(4000), served)
    assert fitted["macro_f1"] > argmax["macro_f1"] + 0.05
    assert fitted["macro_f1"] == pytest.approx(rule["validation_macro_f1"])
    assert fitted["accuracy"] >= argmax["accuracy"] - MAX_ACCURACY_DROP - 1e-9
    assert rule["class_weights"][3] == pytest.approx(1.0) and rule["label_order"] == ["I", "C", "S", "E"]


def test_ndcg_per_query_equals_sklearn_with_tied_scores_and_gains():
    from sklearn.metrics import ndcg_score

    from mmsearch.metrics import ndcg_per_query, query_groups

    rng = np.random.default_rng(1)
    queries = rng.integers(0, 60, 900)
    gains = rng.choice(GAIN_BY_ID, len(queries))
    scores = rng.integers(0, 4, len(queries)) / 4  # few distinct values: many ties within a query
    values = ndcg_per_query(queries, gains, scores)
    group, count = query_groups(queries)
    for g in range(count):
        rows = group == g
        if rows.sum() >= 2 and gains[rows].max() > 0:
            assert values[g] == pytest.approx(ndcg_score([gains[rows]], [scores[rows]]))
        else:
            assert np.isnan(values[g])
