"""The best possible scores on a split of generated data: from the true p(label | pair) the
generator wrote beside the raw files (`mmsearch ceiling`, and every baseline's gap in the bench)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mmsearch import features
from mmsearch.tools.sample_data import TRUTH_FILE
from mmsearch.tools.sample_world import draw_labels


def true_probabilities(raw_dir: Path, merged_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, query ids and the true p(label | pair) [n, 4] (label-id order) of one merged split."""
    truth = pq.read_table(Path(raw_dir) / TRUTH_FILE)
    rows = pq.read_table(Path(merged_dir) / split, columns=["example_id", "query_id", features.LABEL])
    position = {e: i for i, e in enumerate(truth.column("example_id").to_numpy())}
    index = np.array([position[e] for e in rows.column("example_id").to_numpy()])
    order = [features.LABELS_BY_ID[i] for i in range(features.NUM_CLASSES)]  # label-id order: I, C, S, E
    probabilities = np.column_stack([truth.column(f"p_{name}").to_numpy()[index] for name in order])
    return rows.column(features.LABEL).to_numpy(), rows.column("query_id").to_numpy(zero_copy_only=False), probabilities


def ceiling(raw_dir: Path, merged_dir: Path, split: str = "test") -> dict:
    """The best possible scores on one merged split of generated data, from the true p(label | pair):
    accuracy and nDCG by its argmax and expected gain; macro-F1 also with the decision rule the
    model gets (fitted on the validation split's true p), which argmax does not maximise.
    Needs scikit-learn."""
    from mmsearch.metrics import apply_decision_rule, classification_metrics, fit_decision_rule, headline

    labels, query_ids, probabilities = true_probabilities(raw_dir, merged_dir, split)
    best = headline(classification_metrics(labels, probabilities, query_ids))
    rule = fit_decision_rule(*true_probabilities(raw_dir, merged_dir, "val")[::2])
    served = apply_decision_rule(probabilities, rule["class_weights"])
    ruled = classification_metrics(labels, probabilities, query_ids, served)
    best["macro_f1_argmax"] = best["macro_f1"]
    best["macro_f1"] = max(best["macro_f1"], ruled["macro_f1"])
    best["ndcg_expected"] = expected_ndcg(query_ids, probabilities)
    return {"split": split, "rows": len(labels), **best}


def expected_ndcg(query_ids: np.ndarray, probabilities: np.ndarray, draws: int = 200, seed: int = 0) -> float:
    """The nDCG of the ranking by true expected gain, averaged over `draws` draws of the labels
    from the true p: what "best possible" bounds. The test split's labels are one such draw, on
    which a model can land above it by chance (the interval says how far)."""
    from mmsearch.metrics import GAIN_BY_ID, mean_ndcg

    rng = np.random.default_rng(seed)
    scores = probabilities @ GAIN_BY_ID
    values = [mean_ndcg(query_ids, GAIN_BY_ID[draw_labels(probabilities, rng)], scores)[0] for _ in range(draws)]
    return float(np.mean(values))
