"""The Keras models: the `query` model is the original design, layer for layer."""

import pytest

from mmsearch import model as M

pytestmark = pytest.mark.ml


def test_query_model_is_the_original_design():
    model = M.build_model("query", 768)
    layers = [layer for layer in model.layers if layer.__class__.__name__ != "InputLayer"]
    assert [type(layer).__name__ for layer in layers] == ["Dense", "Dropout", "Dense", "Dense"]
    assert [getattr(layer, "units", None) for layer in layers] == [256, None, 128, 4]
    assert [layer.activation.__name__ for layer in layers if hasattr(layer, "activation")] == ["relu", "relu", "softmax"]
    assert layers[1].rate == 0.3
    assert model.input_shape == {"query_embedding": (None, 768)} or model.input_shape == (None, 768)
    assert model.count_params() == (768 * 256 + 256) + (256 * 128 + 128) + (128 * 4 + 4)
    assert type(model.optimizer).__name__ == "Adam"
    assert model.loss == "sparse_categorical_crossentropy"
    assert M.input_width("query", 768) == 768


def test_query_product_model_runs_the_same_trunk_on_all_features():
    model = M.build_model("query_product", 768)
    assert sorted(model.input_names) == sorted(M.feature_names("query_product"))
    assert model.get_layer("features").output_shape == (None, 3 * 768 + 2)
    assert model.get_layer("dense_256").units == 256 and model.get_layer("esci_probabilities").units == 4
    assert M.input_width("query_product", 768) == 2306


def test_keras_is_keras_2_as_the_transform_layer_needs():
    assert M.keras().Model.__module__.startswith("tf_keras")
