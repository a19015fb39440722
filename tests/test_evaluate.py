"""The metrics: nDCG with ESCI gains by hand and against scikit-learn, classification metrics, baselines."""

import numpy as np
import pytest

from mmsearch import config as C
from mmsearch.evaluate import GAIN_BY_ID, classification_metrics, majority_probabilities, mean_ndcg

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


def test_majority_baseline_predicts_the_train_majority():
    probabilities = majority_probabilities({"E": 10, "S": 4, "I": 2, "C": 1}, 3)
    assert probabilities.argmax(axis=1).tolist() == [C.LABEL_IDS["E"]] * 3
