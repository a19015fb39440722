"""The Keras models. The `query` trunk is the original design's, kept for comparison.

Original: Dense 256 relu, Dropout 0.3, Dense 128 relu, Dense 4 softmax; Adam;
sparse categorical cross-entropy. `query_product` runs the same trunk on the query
embedding, the product's text and image embeddings and the two query-product cosines.
"""

from __future__ import annotations

from mmsearch import config as C

COS_FEATURES = ("cos_query_text", "cos_query_image")


def keras():
    """tf.keras as TensorFlow Transform configures it: Keras 2 (tf_keras).

    Importing tensorflow_transform sets TF_USE_LEGACY_KERAS=1, but only before anything
    first touches tf.keras; the transform layer is a Keras 2 layer, so the model must be too.
    """
    import tensorflow_transform  # noqa: F401
    import tensorflow as tf

    if not tf.keras.Model.__module__.startswith("tf_keras"):
        raise RuntimeError(
            f"tf.keras is Keras 3 ({tf.keras.Model.__module__}): import tensorflow_transform (or set "
            "TF_USE_LEGACY_KERAS=1) before anything uses tf.keras"
        )
    return tf.keras


def feature_names(feature_set: str) -> tuple[str, ...]:
    return C.EMBEDDING_COLUMNS[feature_set] + (COS_FEATURES if feature_set == "query_product" else ())


def input_width(feature_set: str, dim: int) -> int:
    return len(C.EMBEDDING_COLUMNS[feature_set]) * dim + (len(COS_FEATURES) if feature_set == "query_product" else 0)


def build_model(feature_set: str, dim: int, dropout: float = 0.3, learning_rate: float = 0.001):
    k = keras()
    inputs = {name: k.Input(shape=(dim,) if name in C.EMBEDDING_COLUMNS["query_product"] else (1,), name=name)
              for name in feature_names(feature_set)}
    x = list(inputs.values())
    x = x[0] if len(x) == 1 else k.layers.Concatenate(name="features")(x)
    x = k.layers.Dense(256, activation="relu", name="dense_256")(x)
    x = k.layers.Dropout(dropout, name="dropout")(x)
    x = k.layers.Dense(128, activation="relu", name="dense_128")(x)
    outputs = k.layers.Dense(C.NUM_CLASSES, activation="softmax", name="esci_probabilities")(x)
    model = k.Model(inputs=inputs, outputs=outputs, name=f"esci_{feature_set}")
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
