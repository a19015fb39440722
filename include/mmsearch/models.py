"""The Keras models (docs/design.md, The model, has the why of each piece).

`query`: the original design, kept for comparison: Dense 256 relu, Dropout 0.3, Dense 128 relu,
Dense 4 softmax on the query embedding; Adam; sparse categorical cross-entropy.

`query_product`: wide and deep. Wide: a linear model on the pair features, started from a
logistic regression fitted on the train split. Deep: a tower per input projecting its whitened
embedding's first `components`, the query's tower output times each product's (a bilinear form
that can learn one-way relations), a hidden layer whose logits add to the wide ones from zero.
`hidden_units: 0` is the wide part alone.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import asdict, dataclass, fields, replace

from mmsearch import features


@dataclass(frozen=True)
class Hyperparameters:
    """One pair-model candidate. The first three default to the run's settings (batch_size,
    learning_rate, dropout); a candidate in the DAG's `candidates` overrides any field."""

    batch_size: int = 32
    learning_rate: float = 0.001
    dropout: float = 0.3
    projection_dim: int = 64
    hidden_units: int = 128
    l2: float = 1e-3
    # Keras class weights: none, or sqrt (inverse square root of the train frequency)
    class_weighting: str = "none"
    # The whitened components the towers and the whitened cosines read (at most the transform's
    # features.WHITENED_WIDTH): the default candidates read 32 and 128, and select keeps one
    components: int = features.WHITENED_WIDTH
    # The candidate's schedule: at most this many epochs, its learning rate cosine-decayed over
    # them; 0: the run's `epochs`, which also caps it
    epochs: int = 0

    @classmethod
    def for_candidate(
        cls, overrides: dict, batch_size: int = 32, learning_rate: float = 0.001, dropout: float = 0.3
    ) -> Hyperparameters:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown hyperparameters {unknown} in candidate {overrides}; known: {sorted(names)}")
        hp = cls(batch_size=batch_size, learning_rate=learning_rate, dropout=dropout)
        hp = replace(hp, **overrides)
        if hp.class_weighting not in ("none", "sqrt"):
            raise ValueError(f"class_weighting must be 'none' or 'sqrt', not {hp.class_weighting!r}")
        if not 1 <= hp.components <= features.WHITENED_WIDTH:
            raise ValueError(f"components must be 1 to {features.WHITENED_WIDTH}, not {hp.components!r}")
        if hp.epochs < 0:
            raise ValueError(f"epochs must be at least 1 (or 0: the run's), not {hp.epochs!r}")
        return hp

    def as_dict(self) -> dict:
        return asdict(self)


# Training steps Keras runs in one call of its compiled function: the same updates in the same
# order, with a twentieth of the Python overhead that dominates these small models' steps on CPU.
STEPS_PER_EXECUTION = 20


def keras():
    """tf.keras as TensorFlow Transform configures it: Keras 2 (tf_keras).

    Importing tensorflow_transform sets TF_USE_LEGACY_KERAS=1, but only before anything
    first touches tf.keras; the transform layer is a Keras 2 layer, so the model must be too.
    """
    import tensorflow as tf
    import tensorflow_transform  # noqa: F401

    if not tf.keras.Model.__module__.startswith("tf_keras"):
        raise RuntimeError(
            f"tf.keras is Keras 3 ({tf.keras.Model.__module__}): import tensorflow_transform (or set "
            "TF_USE_LEGACY_KERAS=1) before anything uses tf.keras"
        )
    return tf.keras


def make_deterministic(seed: int) -> None:
    """The same weights from the same data, code and settings on the same machine: every seed
    (Python, numpy, TensorFlow) set, and TensorFlow's kernels made deterministic. Call before the
    model is built, since its initial weights are drawn then, and before TensorFlow's first op
    (its thread pools are fixed then)."""
    import tensorflow as tf

    # One thread a kernel: these models' ops are too small to be worth splitting (an epoch took
    # 1.5x as long on both cores), and it leaves the other core to the input pipeline.
    # In a process where TensorFlow already ran (a test's), the pools stay as they are.
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(1)
    keras().utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def weights_digest(model) -> str:
    """sha256 of every weight's bytes, in layer order: two models with the same digest are the same."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


def fit_logistic_regression(inputs, labels) -> tuple:
    """A multinomial logistic regression (scikit-learn) as a dense layer's weights: kernel
    [width, 4] and bias [4] in label-id order; a label absent from `labels` gets a bias of -10
    (probability ~0). The CLIP baseline and the wide part's starting point are both this."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    # Newton steps on the Cholesky factor: these few features converge in ~5 iterations, where
    # lbfgs stopped after ~60 short of the optimum
    fitted = LogisticRegression(solver="newton-cholesky", max_iter=100).fit(inputs, labels)
    kernel, bias = np.zeros((inputs.shape[1], features.NUM_CLASSES)), np.full(features.NUM_CLASSES, -10.0)
    if len(fitted.classes_) == 2:  # scikit-learn's binary form: one row of coefficients, for classes_[1]
        kernel[:, fitted.classes_[1]], bias[fitted.classes_] = fitted.coef_[0], (0.0, fitted.intercept_[0])
    else:
        kernel[:, fitted.classes_], bias[fitted.classes_] = fitted.coef_.T, fitted.intercept_
    return kernel, bias


def softmax_probabilities(inputs, kernel, bias):
    """[n, 4] probabilities of a dense softmax layer, in numpy."""
    import numpy as np

    logits = inputs @ np.asarray(kernel) + np.asarray(bias)
    logits -= logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def input_widths(feature_set: str, dim: int, components: int = features.WHITENED_WIDTH) -> dict[str, int]:
    """The width of each transformed feature a model of this feature set reads."""
    vectors = {
        **dict.fromkeys(features.EMBEDDING_COLUMNS["query_product"], dim),
        **dict.fromkeys(features.WHITENED.values(), min(components, features.whitened_width(dim))),
    }
    return {name: vectors.get(name, 1) for name in features.model_features(feature_set)}


def model_widths(model) -> dict[str, int]:
    """The width of each input of a built Keras model, by name: what to read for it."""
    return {name: int(tensor.shape[-1]) for name, tensor in zip(model.input_names, model.inputs)}


def input_width(feature_set: str, dim: int, components: int = features.WHITENED_WIDTH) -> int:
    return sum(input_widths(feature_set, dim, components).values())


def _inputs(feature_set: str, dim: int, components: int = features.WHITENED_WIDTH) -> dict:
    k = keras()
    widths = input_widths(feature_set, dim, components)
    return {name: k.Input(shape=(width,), name=name) for name, width in widths.items()}


def build_query_model(dim: int, dropout: float = 0.3, learning_rate: float = 0.001):
    """The original design, layer for layer."""
    k = keras()
    inputs = _inputs("query", dim)
    x = k.layers.Dense(256, activation="relu", name="dense_256")(inputs[features.QUERY_EMBEDDING])
    x = k.layers.Dropout(dropout, name="dropout")(x)
    x = k.layers.Dense(128, activation="relu", name="dense_128")(x)
    outputs = k.layers.Dense(features.NUM_CLASSES, activation="softmax", name="esci_probabilities")(x)
    return _compiled(k.Model(inputs=inputs, outputs=outputs, name="esci_query"), learning_rate)


def _compiled(model, learning_rate, *metrics):
    """Adam on sparse categorical cross-entropy, STEPS_PER_EXECUTION steps a call, accuracy and `metrics`."""
    optimizer, loss = keras().optimizers.Adam(learning_rate=learning_rate), "sparse_categorical_crossentropy"
    model.compile(optimizer, loss, steps_per_execution=STEPS_PER_EXECUTION, metrics=["accuracy", *metrics])
    return model


def build_pair_model(dim: int, hp: Hyperparameters, decay_steps: int = 10_000, wide_init=None):
    """Wide and deep: logits = wide(cosines) + deep(pair features), softmax.

    `wide_init`: (kernel [6, 4], bias [4]) of a logistic regression on the pair features (the
    z-scored cosines, the whitened ones); with the deep output layer starting at zero, the
    untrained model *is* that regression, and training only moves it where validation loss says
    it should."""
    k = keras()
    inputs = _inputs("query_product", dim, hp.components)
    whitened_cosines = [
        k.layers.Dot(axes=1, normalize=True, name=name)([inputs[left], inputs[right]])
        for name, (left, right) in features.WHITENED_COSINES.items()
    ]
    scalars = [inputs[name] for name in features.COSINES] + whitened_cosines
    cosines = k.layers.Concatenate(name="pair_cosines")(scalars)
    wide = k.layers.Dense(features.NUM_CLASSES, name="wide_logits")
    logits = [wide(cosines)]
    if hp.hidden_units:
        dense = functools.partial(k.layers.Dense, kernel_regularizer=k.regularizers.l2(hp.l2) if hp.l2 else None)
        columns = features.EMBEDDING_COLUMNS["query_product"]
        towers = {
            name: dense(hp.projection_dim, name=f"{name}_tower")(inputs[features.WHITENED[name]]) for name in columns
        }
        query = towers[features.QUERY_EMBEDDING]
        interactions = [k.layers.Multiply(name=f"query_x_{p}")([query, towers[p]]) for p in features.PRODUCT_EMBEDDINGS]
        x = k.layers.Concatenate(name="pair_features")([*towers.values(), *interactions, cosines])
        x = dense(hp.hidden_units, activation="relu", name="hidden")(x)
        x = k.layers.Dropout(hp.dropout, name="dropout")(x)
        logits.append(dense(features.NUM_CLASSES, kernel_initializer="zeros", name="deep_logits")(x))
    x = k.layers.Add(name="logits")(logits) if len(logits) > 1 else logits[0]
    # compiled with a `crossentropy` metric: the loss without the L2 penalty, what early
    # stopping and the starting-point check compare (the penalty of a fresh projection is large)
    outputs = k.layers.Softmax(name="esci_probabilities")(x)
    model = k.Model(inputs=inputs, outputs=outputs, name="esci_query_product")
    if wide_init is not None:
        import numpy as np

        wide.set_weights([np.asarray(w, dtype=np.float32) for w in wide_init])
    schedule = k.optimizers.schedules.CosineDecay(hp.learning_rate, decay_steps=max(decay_steps, 1), alpha=0.1)
    return _compiled(model, schedule, k.metrics.SparseCategoricalCrossentropy(name="crossentropy"))
