"""What the pair model computes from the whitened components it reads, in numpy: the cosines of
the whitened vectors over the first `components`, and the six pair features its wide part reads.
The model computes the same in Keras (models.build_pair_model); the wide part's starting
regression is fitted on these (training.wide_init).

How many components a model reads is its `components` hyperparameter: the default candidates
train the deep model at two widths and `select` keeps one on validation (docs/design.md, The
model): a few dozen components separate two dozen product types, a real catalogue's thousands
need more, and components a data set does not need are parameters to overfit.
"""

from __future__ import annotations

import numpy as np

from mmsearch import features


def whitened_cosines(columns: dict, components: int) -> np.ndarray:
    """[n, 3] cosines of the whitened vectors' first `components`, as the model computes them."""
    cosines = []
    for left, right in features.WHITENED_COSINES.values():
        a, b = (np.asarray(columns[side])[:, :components] for side in (left, right))
        norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        cosines.append(np.sum(a * b, axis=1) / norms)
    return np.column_stack(cosines)


def pair_features(columns: dict, components: int) -> np.ndarray:
    """[n, 6] what the pair model's wide part reads: the z-scored cosines, the whitened cosines."""
    z_scored = np.hstack([np.asarray(columns[name]).reshape(-1, 1) for name in features.COSINES])
    return np.hstack([z_scored, whitened_cosines(columns, components)])
