"""The whitening analyzer: one pass over the stacked embeddings gives their mean and the PCA
whitening matrix (the top components scaled by 1 / sqrt(their variance)).

`tft.pca` plus `tft.covariance` gave the same from two 768 x 768 covariance passes over the
same rows (the first keeps only the eigenvectors, the second was there for their variances);
this is one covariance, with the eigendecomposition of it, as a TensorFlow Transform
`ptransform_analyzer`, in the z-scores' analysis phase.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np


class _CovarianceFn(beam.CombineFn):
    """[sum of x x^T, sum of x, count] over batches of rows, in float64."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, batches):
        (rows,) = batches
        found = [np.asarray(rows.T @ rows, np.float64), np.asarray(rows.sum(axis=0), np.float64), len(rows)]
        return found if accumulator is None else [a + b for a, b in zip(accumulator, found)]

    def merge_accumulators(self, accumulators):
        present = [a for a in accumulators if a is not None]
        return [sum(parts) for parts in zip(*present)] if present else None

    def extract_output(self, accumulator):
        return accumulator


class Whitening(beam.PTransform):
    """Batches of rows [n, d] -> (mean [d], whitening matrix [d, components]), both float32."""

    def __init__(self, components: int):
        super().__init__()
        self.components = components

    def expand(self, batches):
        return (
            batches
            | "Covariance" >> beam.CombineGlobally(_CovarianceFn())
            | "Whiten" >> beam.FlatMap(self._outputs).with_outputs("mean", "matrix")
        )

    def _outputs(self, accumulator):
        sum_product, sum_rows, count = accumulator
        mean = sum_rows / count
        variances, vectors = np.linalg.eigh(sum_product / count - np.outer(mean, mean))
        top = np.argsort(variances)[::-1][: self.components]
        matrix = vectors[:, top] / np.sqrt(np.maximum(variances[top], 0) + 1e-12)
        yield beam.pvalue.TaggedOutput("mean", mean.astype(np.float32))
        yield beam.pvalue.TaggedOutput("matrix", matrix.astype(np.float32))


def whitening(stacked, components: int):
    """The mean and whitening matrix of `stacked` [rows, d] over the whole dataset, as tensors."""
    import tensorflow as tf
    import tensorflow_transform as tft

    dim = stacked.shape[1]
    mean, matrix = tft.experimental.ptransform_analyzer(
        [stacked], Whitening(components), [tf.float32, tf.float32], [[dim], [dim, components]], name="whitening"
    )
    return mean, matrix
