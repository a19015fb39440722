"""Serving: a SavedModel that takes raw embeddings and applies the transform graph itself,
and the MLflow pyfunc around it (input: a DataFrame of raw embeddings; output: the
ESCI label and the four class probabilities), so serving cannot skew from training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmsearch import features, models

PROBABILITY_COLUMNS = {"E": "p_E", "S": "p_S", "C": "p_C", "I": "p_I"}
# The pyfunc artifact holding the per-class weights fitted on validation (metrics.fit_decision_rule).
DECISION_RULE = "decision_rule"


def export_serving_model(model, transform_graph: Path, raw_columns, dim: int, export_dir: Path) -> None:
    """Save `model` with a `serving_default` signature over the raw embedding columns.

    What is saved is the signature, the transform graph and the model's variables, not the Keras
    model: Keras would also trace and save every layer's call for reloading as Keras, which no
    reader does (the pyfunc and the LiteRT conversion read the signature): at 128 components the
    export took 2.1 s and a load 0.26 s that way, 1.45 s and 0.08 s this way."""
    import tensorflow as tf
    import tensorflow_transform as tft

    served = tf.Module()
    served.tft_layer = tft.TFTransformOutput(str(transform_graph)).transform_features_layer()
    served.model_variables = list(model.variables)
    # the width of each input: a model reading fewer whitened components than the transform emits
    # gets their leading ones, as in training (mmsearch.datasets)
    widths = models.model_widths(model)
    signature = {name: tf.TensorSpec([None, dim], tf.float32, name=name) for name in raw_columns}

    @tf.function(input_signature=[signature])
    def serve(raw_features):
        transformed = served.tft_layer(raw_features)
        inputs = {
            name: tf.reshape(transformed[name], [-1, 1])
            if transformed[name].shape.rank == 1
            else transformed[name][:, :width]
            for name, width in widths.items()
        }
        return {"probabilities": model(inputs, training=False)}

    tf.saved_model.save(served, str(export_dir), signatures={"serving_default": serve.get_concrete_function()})


def embedding_matrices(table, columns, dtype=np.float32) -> dict[str, np.ndarray]:
    """Embedding columns of an Arrow table or record batch as [n, width] matrices."""
    matrices = {}
    for name in columns:
        column = table.column(name)
        column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
        matrices[name] = column.flatten().to_numpy().reshape(len(column), -1).astype(dtype, copy=False)
    return matrices


def raw_frame(table, columns, dtype=np.float32) -> pd.DataFrame:
    """Raw embedding columns of an Arrow table as a DataFrame of arrays (the pyfunc's input)."""
    return pd.DataFrame({name: list(matrix) for name, matrix in embedding_matrices(table, columns, dtype).items()})


def model_signature(raw_columns):
    """Arrays of doubles in (JSON carries doubles; float32 arrays convert safely), label and p_* out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(Array(DataType.double), name) for name in raw_columns])
    probabilities = [ColSpec(DataType.double, column) for column in PROBABILITY_COLUMNS.values()]
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(DataType.string, "esci_label"), *probabilities]))


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    names = ("tensorflow", "tensorflow-transform", "tf-keras", "mlflow", "pandas", "numpy", "pyarrow")
    return [f"{name}=={version(name)}" for name in names]


def served_label_ids(probabilities: np.ndarray, class_weights=None) -> np.ndarray:
    """The served labels' ids: the decision rule's per-class weights applied, argmax without one."""
    weights = np.ones(probabilities.shape[1]) if class_weights is None else np.asarray(class_weights)
    return (probabilities * weights).argmax(axis=1)


def probabilities_frame(probabilities: np.ndarray, class_weights=None) -> pd.DataFrame:
    """The pyfunc's output: the served label and p_*."""
    labels = served_label_ids(probabilities, class_weights)
    frame = pd.DataFrame({"esci_label": [features.LABELS_BY_ID[i] for i in labels]})
    for label, column in PROBABILITY_COLUMNS.items():
        frame[column] = probabilities[:, features.LABEL_IDS[label]].astype(np.float64)
    return frame


try:
    import mlflow.pyfunc

    _PythonModel = mlflow.pyfunc.PythonModel
except ImportError:  # the Airflow environment has no MLflow; only the ML one loads this class
    _PythonModel = object


class EsciRelevanceModel(_PythonModel):
    """Pyfunc: raw embeddings in, `esci_label` and `p_E, p_S, p_C, p_I` out. The label applies the
    decision rule fitted on validation when the model carries one; the probabilities are the model's."""

    def __getstate__(self):
        # MLflow may call load_context (to check the input example) before pickling the
        # model: the loaded TensorFlow graph is state to rebuild, not to pickle.
        return {}

    def load_context(self, context):
        import json

        import tensorflow as tf
        import tensorflow_transform  # noqa: F401  (registers what the transform graph needs)

        rule = context.artifacts.get(DECISION_RULE)
        self._class_weights = json.loads(Path(rule).read_text())["class_weights"] if rule else None
        self._model = tf.saved_model.load(context.artifacts["saved_model"])
        self._serve = self._model.signatures["serving_default"]
        self._inputs = dict(self._serve.structured_input_signature[1].items())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        missing = [name for name in self._inputs if name not in model_input.columns]
        if missing:
            raise MlflowException.invalid_parameter_value(
                f"model input lacks columns {missing}; it needs {sorted(self._inputs)}"
            )
        for name, spec in self._inputs.items():  # a 4xx naming the column and rows, not a 500
            widths = model_input[name].map(lambda value: len(value) if hasattr(value, "__len__") else 0).to_numpy()
            wrong = np.flatnonzero(widths != spec.shape[1])
            if len(wrong):
                raise MlflowException.invalid_parameter_value(
                    f"column '{name}' must hold {spec.shape[1]}-long arrays; rows {wrong[:10].tolist()} "
                    f"hold {sorted(set(widths[wrong[:10]].tolist()))}"
                )
        matrices = {name: np.stack(model_input[name].to_numpy()) for name in self._inputs}
        return probabilities_frame(self.probabilities(matrices), self._class_weights)

    def label_ids(self, probabilities: np.ndarray) -> np.ndarray:
        """The labels `predict` serves for these probabilities (its decision rule applied)."""
        return served_label_ids(probabilities, self._class_weights)

    def probabilities(self, matrices: dict[str, np.ndarray]) -> np.ndarray:
        """[n, 4] class probabilities in label-id order, from one [n, width] matrix per embedding
        column (what `predict` computes, without a DataFrame of arrays: batch scoring uses it)."""
        import tensorflow as tf

        feeds = {}
        for name, spec in self._inputs.items():
            matrix = np.asarray(matrices[name], dtype=np.float32)
            if matrix.ndim != 2 or matrix.shape[1] != spec.shape[1]:
                raise ValueError(f"column '{name}' must hold {spec.shape[1]}-long arrays, found shape {matrix.shape}")
            feeds[name] = tf.constant(matrix)
        return self._serve(**feeds)["probabilities"].numpy()
