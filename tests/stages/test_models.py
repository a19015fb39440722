"""The Keras models: the `query` model is the original design, layer for layer; the pair model
starts as the logistic regression it is given, and its deep part starts silent."""

import numpy as np
import pytest

from mmsearch import features, models, representation

pytestmark = pytest.mark.ml


def test_query_model_is_the_original_design():
    model = models.build_query_model(768)
    layers = [layer for layer in model.layers if layer.__class__.__name__ != "InputLayer"]
    assert [type(layer).__name__ for layer in layers] == ["Dense", "Dropout", "Dense", "Dense"]
    assert [getattr(layer, "units", None) for layer in layers] == [256, None, 128, 4]
    assert [layer.activation.__name__ for layer in layers if hasattr(layer, "activation")] == [
        "relu",
        "relu",
        "softmax",
    ]
    assert layers[1].rate == 0.3
    assert model.count_params() == (768 * 256 + 256) + (256 * 128 + 128) + (128 * 4 + 4)
    assert type(model.optimizer).__name__ == "Adam"
    assert model.loss == "sparse_categorical_crossentropy"
    assert models.input_width("query", 768) == 768


def _random_inputs(rows: int, dim: int, components: int = features.WHITENED_WIDTH) -> dict:
    rng = np.random.default_rng(0)
    widths = models.input_widths("query_product", dim, components)
    return {name: rng.standard_normal((rows, width)).astype(np.float32) for name, width in widths.items()}


def test_pair_model_starts_as_the_logistic_regression_it_is_given():
    """...on the z-scored cosines and the cosines of the components it reads, computed as the
    first pass and the wide part's start compute them (mmsearch.representation)."""
    rng = np.random.default_rng(1)
    kernel, bias = rng.standard_normal((len(features.PAIR_FEATURES), 4)), rng.standard_normal(4)
    hp = models.Hyperparameters(projection_dim=8, hidden_units=16, components=8)
    model = models.build_pair_model(16, hp, wide_init=(kernel, bias))
    inputs = _random_inputs(5, 16, components=8)
    logits = representation.pair_features(inputs, 8) @ kernel + bias
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model(inputs, training=False).numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("components", [32, 128])
def test_pair_model_has_a_tower_per_side_over_the_components_it_reads(components):
    hp = models.Hyperparameters(projection_dim=64, hidden_units=128, components=components)
    model = models.build_pair_model(768, hp)
    assert sorted(model.input_names) == sorted(features.model_features("query_product"))
    towers = [model.get_layer(f"{name}_tower") for name in features.EMBEDDING_COLUMNS["query_product"]]
    assert len({id(tower) for tower in towers}) == 3  # query and product sides are not one projection
    assert all(tower.count_params() == components * 64 + 64 for tower in towers)
    # each side's vector, and the query's times each product vector: a bilinear form q^T U^T V p
    assert model.get_layer("pair_features").output_shape == (None, 5 * 64 + len(features.PAIR_FEATURES))
    assert models.input_width("query_product", 768, components) == 3 * components + len(features.COSINES)
    assert models.model_widths(model) == models.input_widths("query_product", 768, components)
    wide_only = models.build_pair_model(768, models.Hyperparameters(hidden_units=0, components=components))
    assert wide_only.count_params() == len(features.PAIR_FEATURES) * 4 + 4


def test_the_pair_model_can_tell_which_way_a_relation_runs():
    """phone -> case is a complement, case -> phone is not: a relation a symmetric form of the two
    sides (a shared projection, elementwise products) cannot learn. The pair model learns it."""
    models.make_deterministic(0)
    rng = np.random.default_rng(0)
    dim, rows = 16, 4000
    phone, case = np.eye(dim, dtype=np.float32)[:2]
    query_is_phone = rng.random(rows) < 0.5
    query = np.where(query_is_phone[:, None], phone, case)
    product = np.where(query_is_phone[:, None], case, phone)
    inputs = _random_inputs(rows, dim)
    inputs = {name: np.zeros_like(value) for name, value in inputs.items()}
    inputs[features.WHITENED[features.QUERY_EMBEDDING]] = query
    inputs[features.WHITENED[features.PRODUCT_TEXT_EMBEDDING]] = product
    labels = np.where(query_is_phone, features.LABEL_IDS["C"], features.LABEL_IDS["I"])
    model = models.build_pair_model(dim, models.Hyperparameters(projection_dim=8, hidden_units=16, learning_rate=0.01))
    model.fit(inputs, labels, epochs=5, batch_size=128, verbose=0)
    predicted = model(inputs, training=False).numpy().argmax(axis=1)
    assert (predicted == labels).mean() > 0.99


def test_candidate_overrides_are_checked():
    hp = models.Hyperparameters.for_candidate({"hidden_units": 0}, batch_size=64)
    assert hp.hidden_units == 0 and hp.batch_size == 64 and hp.learning_rate == 0.001
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        models.Hyperparameters.for_candidate({"hidden": 3})
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        models.Hyperparameters.for_candidate({"epochs": -1})


def test_keras_is_keras_2_as_the_transform_layer_needs():
    assert models.keras().Model.__module__.startswith("tf_keras")


def test_logistic_regression_as_layer_weights_matches_scikit_learn_and_drops_absent_labels():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    inputs = rng.standard_normal((300, 2))
    labels = np.where(inputs[:, 0] > 0.3, 3, np.where(inputs[:, 1] > 0, 2, 0))  # no C (1) at all
    kernel, bias = models.fit_logistic_regression(inputs, labels)
    probabilities = models.softmax_probabilities(inputs, kernel, bias)
    # the same optimum as scikit-learn's default solver, run to convergence
    expected = LogisticRegression(max_iter=10_000, tol=1e-10).fit(inputs, labels).predict_proba(inputs)
    np.testing.assert_allclose(probabilities[:, [0, 2, 3]], expected, atol=1e-4)
    assert probabilities[:, 1].max() < 1e-3
    binary = models.softmax_probabilities(inputs, *models.fit_logistic_regression(inputs, (labels == 3) * 3))
    assert np.allclose(binary.sum(axis=1), 1.0) and binary[:, [1, 2]].max() < 1e-3
