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
# Whitening: one PCA over the three embeddings together (one CLIP space), fitted on the train
# split, scaled to unit variance: what the pair model's towers read (docs/design.md, The model).
# The transform emits the first WHITENED_WIDTH components; how many of them a model reads (its
# `components`) is a candidate setting, chosen per data set on validation (config.DEFAULT_CANDIDATES).
WHITENED_WIDTH = 128
WHITENED = {name: f"{name}_whitened" for name in EMBEDDING_COLUMNS["query_product"]}
# Cosines of the whitened vectors, over the components the model reads (computed in the model):
# the common direction and the low-variance noise gone, they say what the two sides share beyond
# "both are products".
WHITENED_COSINES = {f"whitened_{name}": (WHITENED[left], WHITENED[right]) for name, (left, right) in COSINES.items()}
# Every scalar pair feature the pair model reads: its wide part is a regression on them.
PAIR_FEATURES = (*COSINES, *WHITENED_COSINES)


def raw_cosine(name: str) -> str:
    return name + RAW_COSINE_SUFFIX


def model_features(feature_set: str) -> tuple[str, ...]:
    """The transformed features a model of this feature set reads."""
    if feature_set == "query":
        return EMBEDDING_COLUMNS["query"]
    return (*WHITENED.values(), *COSINES)


def whitened_width(dim: int) -> int:
    """The components the transform emits for embeddings of width `dim`."""
    return min(WHITENED_WIDTH, dim)


def raw_feature_spec(embedding_columns, dim: int) -> dict:
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([dim], tf.float32) for name in embedding_columns}
    spec[LABEL] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def preprocessing_fn(inputs: dict) -> dict:
    """The query embedding's elementwise z-scores (the original design's model reads them); the
    pair cosines raw and z-scored; the whitened embeddings; the label. (No product z-scores: no
    model reads them, and every reader of the records would parse them.)"""
    import tensorflow as tf
    import tensorflow_transform as tft

    outputs = {QUERY_EMBEDDING: tft.scale_to_z_score(inputs[QUERY_EMBEDDING], elementwise=True)}
    if PRODUCT_TEXT_EMBEDDING in inputs:
        columns = EMBEDDING_COLUMNS["query_product"]
        unit = {name: tf.math.l2_normalize(inputs[name], axis=1) for name in columns}
        for name, (left, right) in COSINES.items():
            cosine = tf.reduce_sum(unit[left] * unit[right], axis=1)
            outputs[raw_cosine(name)] = cosine
            # z-scored: raw cosines in a narrow band would be drowned by the other inputs
            outputs[name] = tft.scale_to_z_score(cosine)
        outputs.update(_whitened(inputs, columns))
    outputs[LABEL] = inputs[LABEL]
    return outputs


def _whitened(inputs: dict, columns) -> dict:
    """Each embedding projected on the shared PCA's first components, scaled to unit variance.

    Every statistic is of the raw embeddings, so the whitening shares the one analyzer pass of
    the z-scores: a pass that needs another's results (a PCA of the z-scores) makes the
    DirectRunner hold every input row between the passes (4.5x the memory at 182k pairs)."""
    import tensorflow as tf

    from mmsearch.whitening import whitening

    stacked = tf.concat([inputs[name] for name in columns], axis=0)
    mean, matrix = whitening(stacked, whitened_width(stacked.shape[1]))
    return {WHITENED[name]: tf.matmul(inputs[name] - mean, matrix) for name in columns}
