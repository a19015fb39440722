"""Relevance metrics (scikit-learn underneath) and the decision rule fitted on validation.

Labels are ids in the original design's map (I=0, C=1, S=2, E=3); probabilities are
[n, 4] in that order. Ranking: products of a query ordered by their expected ESCI gain.
"""

from __future__ import annotations

import numpy as np

from mmsearch import features

LABEL_ORDER = list(range(features.NUM_CLASSES))  # I, C, S, E
GAIN_BY_ID = np.array([features.ESCI_GAINS[features.LABELS_BY_ID[i]] for i in LABEL_ORDER])
HEADLINE = ("accuracy", "macro_f1", "micro_f1", "ndcg")
CALIBRATION_BINS = 10
# The decision rule may give up this much validation accuracy for macro-F1, no more.
MAX_ACCURACY_DROP = 0.0


def query_groups(query_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's query group as an index 0..Q-1, and Q."""
    _, group = np.unique(query_ids, return_inverse=True)
    return group, int(group.max()) + 1 if len(group) else 0


def ndcg_per_query(query_ids: np.ndarray, true_gain: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """nDCG of each query group, in `query_groups` order; NaN for a query with one judged product
    or none of positive gain: it carries no ranking information.

    The value of scikit-learn's `ndcg_score` (tested against it), ties in a query's scores sharing
    their mean gain as there; computed for every query at once, since evaluate ranks a few
    thousand queries per scorer and a call per query cost seconds."""
    group, count = query_groups(query_ids)
    values = np.full(count, np.nan)
    if not count:
        return values
    true_gain, scores = np.asarray(true_gain, dtype=float), np.asarray(scores, dtype=float)
    by_score = np.lexsort((-scores, group))
    by_gain = np.lexsort((-true_gain, group))
    sorted_group = group[by_score]  # == group[by_gain]: both orders keep the query groups together
    rank = np.arange(len(group)) - np.searchsorted(sorted_group, sorted_group)
    discount = 1.0 / np.log2(rank + 2)
    score = scores[by_score]
    tie_run = np.cumsum(np.r_[True, (sorted_group[1:] != sorted_group[:-1]) | (score[1:] != score[:-1])]) - 1
    run_gain = np.bincount(tie_run, weights=true_gain[by_score]) / np.bincount(tie_run)
    dcg = np.bincount(sorted_group, weights=run_gain[tie_run] * discount, minlength=count)
    ideal = np.bincount(sorted_group, weights=true_gain[by_gain] * discount, minlength=count)
    informative = (np.bincount(group, minlength=count) >= 2) & (ideal > 0)
    values[informative] = dcg[informative] / ideal[informative]
    return values


def mean_ndcg(query_ids: np.ndarray, true_gain: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """Mean nDCG over the queries that carry ranking information, and how many counted."""
    values = ndcg_per_query(query_ids, true_gain, scores)
    counted = values[np.isfinite(values)]
    return (float(np.mean(counted)) if len(counted) else float("nan")), len(counted)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Top-label ECE over equal-width confidence bins, and the reliability curve behind it."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / np.maximum(count, 1)
    accuracy = np.bincount(which, weights=correct, minlength=bins) / np.maximum(count, 1)
    ece = float(np.sum(count * np.abs(accuracy - mean_confidence)) / max(len(labels), 1))
    curve = {"bins": edges.tolist(), "count": count.tolist(), "confidence": mean_confidence.tolist()}
    return {"ece": ece, **curve, "accuracy": accuracy.tolist()}


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    query_ids: np.ndarray,
    predicted: np.ndarray | None = None,
    ranking_scores: np.ndarray | None = None,
) -> dict:
    """Accuracy, F1, per-class precision/recall/F1, the confusion matrix, nDCG and calibration.

    `predicted`: the labels the model serves (its decision rule); argmax of `probabilities` if
    None. `ranking_scores`: what the ranking uses; the expected gain if None.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    predicted = probabilities.argmax(axis=1) if predicted is None else predicted
    scores = probabilities @ GAIN_BY_ID if ranking_scores is None else ranking_scores
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=LABEL_ORDER, zero_division=0
    )
    ndcg, ndcg_queries = mean_ndcg(query_ids, GAIN_BY_ID[labels], scores)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "micro_f1": float(f1_score(labels, predicted, average="micro", labels=LABEL_ORDER, zero_division=0)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", labels=LABEL_ORDER, zero_division=0)),
        "ndcg": ndcg,
        "ndcg_queries": ndcg_queries,
        "ece": expected_calibration_error(labels, probabilities)["ece"],
        "per_class": {
            features.LABELS_BY_ID[i]: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for i, p, r, f, n in zip(LABEL_ORDER, precision, recall, f1, support)
        },
        "confusion_matrix": {
            "labels": [features.LABELS_BY_ID[i] for i in LABEL_ORDER],
            "matrix": confusion_matrix(labels, predicted, labels=LABEL_ORDER).tolist(),
        },
    }


def headline(metrics: dict) -> dict:
    return {name: metrics[name] for name in HEADLINE}


def apply_decision_rule(probabilities: np.ndarray, class_weights) -> np.ndarray:
    """The served label: argmax of the probabilities scaled by per-class weights."""
    return (probabilities * np.asarray(class_weights)).argmax(axis=1)


def _macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Macro-F1 from counts (the fitting loop calls this thousands of times)."""
    f1 = []
    for c in LABEL_ORDER:
        tp = np.count_nonzero((predicted == c) & (labels == c))
        denominator = np.count_nonzero(predicted == c) + np.count_nonzero(labels == c)
        f1.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(f1))


def fit_decision_rule(labels: np.ndarray, probabilities: np.ndarray, rounds: int = 3) -> dict:
    """Per-class weights on the probabilities that maximise validation macro-F1, by coordinate
    ascent over a log-spaced grid, giving up at most MAX_ACCURACY_DROP of argmax accuracy.
    Macro-F1 rewards the rare classes (C is ~3 % of ESCI) that argmax almost never predicts."""
    grid = np.exp(np.linspace(-2.5, 2.5, 51))
    weights = np.ones(features.NUM_CLASSES)
    floor = np.mean(probabilities.argmax(axis=1) == labels) - MAX_ACCURACY_DROP
    best = _macro_f1(labels, apply_decision_rule(probabilities, weights))
    for _ in range(rounds):
        for c in LABEL_ORDER:
            for value in grid:
                trial = weights.copy()
                trial[c] = value
                predicted = apply_decision_rule(probabilities, trial)
                score = _macro_f1(labels, predicted)
                if score > best + 1e-9 and np.mean(predicted == labels) >= floor:
                    best, weights = score, trial
    weights = weights / weights[features.LABEL_IDS["E"]]
    return {
        "class_weights": weights.tolist(),
        "validation_macro_f1": best,
        "label_order": [features.LABELS_BY_ID[i] for i in LABEL_ORDER],
    }


# The paired bootstrap over query groups: the test split's queries are a sample of queries, so a
# resample draws queries (with all their judgements) with replacement, the same draw for every
# scorer, and a metric's difference between two scorers is read off the same resamples.
BOOTSTRAP_LEVEL = 0.95


def _confusion_by_query(group: np.ndarray, count: int, labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[Q, 16]: each query group's confusion counts (true label x 4 + predicted)."""
    cells = features.NUM_CLASSES * features.NUM_CLASSES
    flat = group * cells + labels * features.NUM_CLASSES + predicted
    return np.bincount(flat, minlength=count * cells).reshape(count, cells).astype(float)


def _metrics_of_confusions(confusions: np.ndarray) -> dict:
    """accuracy, micro- and macro-F1 of [B, 16] confusion counts, as scikit-learn computes them."""
    matrix = confusions.reshape(-1, features.NUM_CLASSES, features.NUM_CLASSES)
    true_positive = np.diagonal(matrix, axis1=1, axis2=2)
    denominator = matrix.sum(axis=2) + matrix.sum(axis=1)
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    accuracy = true_positive.sum(axis=1) / np.maximum(matrix.sum(axis=(1, 2)), 1)
    return {"accuracy": accuracy, "micro_f1": accuracy, "macro_f1": f1.mean(axis=1)}


def bootstrap(labels: np.ndarray, query_ids: np.ndarray, scorers: dict, resamples: int, seed: int) -> dict:
    """The headline metrics of every scorer on `resamples` resamples of the query groups.

    `scorers`: name -> (served labels, ranking scores). Returns name -> metric -> [resamples]."""
    group, count = query_groups(query_ids)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(count, np.full(count, 1.0 / count), size=resamples).astype(float)  # [B, Q]
    found = {}
    for name, (predicted, ranking) in scorers.items():
        metrics = _metrics_of_confusions(weights @ _confusion_by_query(group, count, labels, predicted))
        ndcg = ndcg_per_query(query_ids, GAIN_BY_ID[labels], ranking)
        counted = np.isfinite(ndcg)
        metrics["ndcg"] = (weights[:, counted] @ ndcg[counted]) / np.maximum(weights[:, counted].sum(axis=1), 1e-12)
        found[name] = metrics
    return found


def interval(samples: np.ndarray, level: float = BOOTSTRAP_LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap samples."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def intervals(point: dict, resampled: dict, reference: str) -> dict:
    """Each scorer's headline metrics with their intervals, and every other scorer's difference
    from `reference` (reference minus other) with the interval of that difference.

    `point`: name -> headline metrics on the whole split; `resampled`: `bootstrap`'s output."""
    own = {
        name: {metric: [*interval(samples)] for metric, samples in metrics.items()}
        for name, metrics in resampled.items()
    }
    differences = {}
    for name in resampled:
        if name == reference:
            continue
        differences[name] = {}
        for metric, samples in resampled[reference].items():
            low, high = interval(samples - resampled[name][metric])
            difference = point[reference][metric] - point[name][metric]
            differences[name][metric] = {"difference": difference, "low": low, "high": high}
    return {"level": BOOTSTRAP_LEVEL, "intervals": own, "differences": differences}
