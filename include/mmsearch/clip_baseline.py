"""The CLIP baseline: training-free ranking by the query-product CLIP cosines, its labels from a
logistic regression on those two cosines (fitted on the train split by stage `baselines`,
scored on the test split by stage `evaluate`)."""

from __future__ import annotations

import numpy as np

from mmsearch import features

# The two query-product cosines the CLIP baseline uses (raw, as cosine ranking sees them).
CLIP_COSINES = (features.COS_QUERY_TEXT, features.COS_QUERY_IMAGE)


def cosines_of(frame_columns: dict) -> np.ndarray:
    """The same two cosines from raw embedding matrices (evaluate's side), [n, 2]."""

    def unit(matrix):
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    query = unit(frame_columns[features.QUERY_EMBEDDING])
    return np.column_stack(
        [np.sum(query * unit(frame_columns[features.COSINES[name][1]]), axis=1) for name in CLIP_COSINES]
    )


def fit_cosine_logistic(cosines: np.ndarray, labels: np.ndarray) -> dict:
    from mmsearch.models import fit_logistic_regression

    kernel, bias = fit_logistic_regression(cosines, labels)
    return {"features": list(CLIP_COSINES), "kernel": kernel.tolist(), "bias": bias.tolist()}


def cosine_logistic_probabilities(fitted: dict, cosines: np.ndarray) -> np.ndarray:
    """[n, 4] in label-id order; a label absent from train gets probability ~0."""
    from mmsearch.models import softmax_probabilities

    return softmax_probabilities(cosines, fitted["kernel"], fitted["bias"])
