"""The feature contract, in one place (as TFX's penguin_utils_base.py keeps its own).

The label and its map, the merged data's embedding columns, the pair features computed in
the TensorFlow Transform graph, the features each model reads, and `preprocessing_fn`.
Merge, transform, model, serving and evaluate import these names; none repeats them.

Light on purpose: the DAG file imports config, which imports this module at parse time,
so TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

# ESCI label map kept from the original design, and the ESCI gains for ranking metrics.
LABEL = "label"
LABEL_IDS = {"I": 0, "C": 1, "S": 2, "E": 3}
LABELS_BY_ID = {v: k for k, v in LABEL_IDS.items()}
ESCI_GAINS = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}
NUM_CLASSES = len(LABEL_IDS)

EMBEDDING_DIM = 768

# Merged-data embedding columns, one fixed-size list column per modality.
QUERY_EMBEDDING = "query_embedding"
PRODUCT_TEXT_EMBEDDING = "product_text_embedding"
PRODUCT_IMAGE_EMBEDDING = "product_image_embedding"
PRODUCT_EMBEDDINGS = (PRODUCT_TEXT_EMBEDDING, PRODUCT_IMAGE_EMBEDDING)

# `query`: the original design (query embedding only); `query_product`: the pair.
FEATURE_SETS = ("query", "query_product")
EMBEDDING_COLUMNS = {
    "query": (QUERY_EMBEDDING,),
    "query_product": (QUERY_EMBEDDING, *PRODUCT_EMBEDDINGS),
}

# Pair features, computed in the transform graph so that serving computes them too.
COS_QUERY_TEXT = "cos_query_text"
COS_QUERY_IMAGE = "cos_query_image"
COS_TEXT_IMAGE = "cos_text_image"
COSINES = {  # name: (left embedding, right embedding)
    COS_QUERY_TEXT: (QUERY_EMBEDDING, PRODUCT_TEXT_EMBEDDING),
    COS_QUERY_IMAGE: (QUERY_EMBEDDING, PRODUCT_IMAGE_EMBEDDING),
    COS_TEXT_IMAGE: (PRODUCT_TEXT_EMBEDDING, PRODUCT_IMAGE_EMBEDDING),
}
# The raw cosines (not z-scored): what the training-free CLIP baseline ranks by.
RAW_COSINE_SUFFIX = "_raw"


def raw_cosine(name: str) -> str:
    return name + RAW_COSINE_SUFFIX


def pair_features(feature_set: str) -> tuple[str, ...]:
    return tuple(COSINES) if feature_set == "query_product" else ()


def model_features(feature_set: str) -> tuple[str, ...]:
    """The transformed features a model of this feature set reads."""
    return EMBEDDING_COLUMNS[feature_set] + pair_features(feature_set)


def raw_feature_spec(embedding_columns, dim: int) -> dict:
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([dim], tf.float32) for name in embedding_columns}
    spec[LABEL] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def preprocessing_fn(inputs: dict) -> dict:
    """Elementwise z-scores of every embedding; the pair cosines raw and z-scored; the label."""
    import tensorflow as tf
    import tensorflow_transform as tft

    outputs = {
        name: tft.scale_to_z_score(inputs[name], elementwise=True)
        for name in EMBEDDING_COLUMNS["query_product"]
        if name in inputs
    }
    if PRODUCT_TEXT_EMBEDDING in inputs:
        unit = {name: tf.math.l2_normalize(inputs[name], axis=1) for name in EMBEDDING_COLUMNS["query_product"]}
        for name, (left, right) in COSINES.items():
            cosine = tf.reduce_sum(unit[left] * unit[right], axis=1)
            outputs[raw_cosine(name)] = cosine
            # z-scored: raw cosines in a narrow band would be drowned by 2,304 z-scored inputs
            outputs[name] = tft.scale_to_z_score(cosine)
    outputs[LABEL] = inputs[LABEL]
    return outputs
