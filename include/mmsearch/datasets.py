"""The transformed splits as TensorFlow data: streamed from the TFRecords, or parsed once and
held in memory when they fit; and a Keras model's predictions over one split.

What to read is given as `widths`: each transformed feature's name and how many of its leading
values to keep (1 for a scalar). The transform emits the whitened vectors at their widest; a
model that reads fewer components gets, and holds, only those."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mmsearch import features, models
from mmsearch.io import read_json

VALIDATION_BATCH_ROWS = 2048
SHUFFLE_BUFFER = 10_000  # serialized examples (~9 KB each)
PARSE_THREADS = 2  # the machine's cores
PREFETCH_BATCHES = 2
# a split held in memory for training: the pair model's train split at 182k pairs is 50 MB at 32
# whitened components, 197 MB at 128
IN_MEMORY_BYTES = 256 * 2**20
# A split held in memory above this size is held in variables: a tf.data pipeline gathering from
# a tensor copies the tensor when it starts (1.53 GB peak training at 182k pairs and 128
# components; 1.31 GB from variables), but gathers from variables are slower (an epoch up to 1.5x)
VARIABLE_BYTES = 128 * 2**20


def records(examples_dir: str):
    """The serialized tf.Examples of one transformed split (its directory in the manifest's `examples`)."""
    import tensorflow as tf

    return tf.data.TFRecordDataset(sorted(str(p) for p in Path(examples_dir).glob("transformed_examples-*")))


def _feature_spec(transform_graph: str, widths: dict) -> dict:
    import tensorflow_transform as tft

    spec = tft.TFTransformOutput(transform_graph).transformed_feature_spec()
    return {name: spec[name] for name in (*widths, features.LABEL)}


def _as_columns(parsed: dict, widths: dict) -> tuple[dict, object]:
    """Parsed features as [n, width] (scalars become [n, 1]; vectors cut to their leading
    `widths`) and the labels."""
    import tensorflow as tf

    label = parsed.pop(features.LABEL)
    return {k: tf.expand_dims(v, -1) if v.shape.rank == 1 else v[:, : widths[k]] for k, v in parsed.items()}, label


def make_dataset(transform_manifest: dict, split: str, widths: dict, batch_size: int, training: bool, seed: int = 0):
    """Batches of (features, label) parsed from the transformed TFRecords, prefetched."""
    import tensorflow as tf

    spec = _feature_spec(transform_manifest["transform_graph"], widths)
    dataset = records(transform_manifest["examples"][split])
    if training:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()

    def parse(serialized):  # a batch of examples: one parse call a batch, not one a row
        return _as_columns(tf.io.parse_example(serialized, spec), widths)

    # Fixed, small buffers: AUTOTUNE's grow with free memory, and 2,048-row batches of 2,304
    # floats are 19 MB each (peak 1.50 GB at 182k pairs with AUTOTUNE)
    return dataset.batch(batch_size).map(parse, num_parallel_calls=PARSE_THREADS).prefetch(PREFETCH_BATCHES)


def read_split(transform_manifest: dict, split: str, widths: dict) -> tuple[dict, object]:
    """The transformed features of one split as [n, width] tensors (variables if large), and its labels. Parsed
    once a process and held as tensors only: training gathers its batches from them, validation
    and the regressions read them, and no second copy is made (at 182k pairs the query model's
    validation split is 83 MB a copy)."""
    examples = transform_manifest["examples"][split]
    rows = _split_rows(transform_manifest, split)
    # one key whatever the order the widths come in: training and the wide part's regression share a parse
    return _parsed(transform_manifest["transform_graph"], examples, tuple(sorted(widths.items())), rows)


def _split_rows(transform_manifest: dict, split: str) -> int:
    return read_json(Path(transform_manifest["merged_dir"]) / "manifest.json")["splits"][split]["rows"]


@functools.lru_cache(maxsize=4)
def _parsed(transform_graph: str, examples_dir: str, widths: tuple, rows: int):
    """Batch by batch into arrays of the split's size: collecting the batches and concatenating
    them held two copies at once (1.7 GB peak in training at 182k pairs and 128 components)."""
    import tensorflow as tf

    widths = dict(widths)
    spec = _feature_spec(transform_graph, widths)
    arrays = {name: np.empty((rows, width), np.float32) for name, width in widths.items()}
    labels = np.empty(rows, np.int64)
    start = 0
    for batch in records(examples_dir).batch(4096):
        columns, label = _as_columns(tf.io.parse_example(batch, spec), widths)
        end = start + len(label)
        for name, values in columns.items():
            arrays[name][start:end] = values.numpy()
        labels[start:end] = label.numpy()
        start = end
    if start != rows:
        raise ValueError(f"{examples_dir} holds {start} examples, its manifest says {rows}")
    large = sum(array.nbytes for array in arrays.values()) > VARIABLE_BYTES
    hold = functools.partial(tf.Variable, trainable=False) if large else tf.convert_to_tensor
    return {name: hold(arrays.pop(name)) for name in widths}, hold(labels)


def release() -> None:
    """Forget the splits held in memory (their memory returns once nothing else holds them)."""
    import gc

    _parsed.cache_clear()
    gc.collect()


def read_scalar_features(transform_manifest: dict, split: str, names) -> tuple[np.ndarray, np.ndarray]:
    """Scalar transformed features [n, len(names)] and the labels of one split, as numpy arrays."""
    columns, labels = read_split(transform_manifest, split, dict.fromkeys(names, 1))
    return np.hstack([columns[name].numpy() for name in names]), labels.numpy()


def fits_in_memory(transform_manifest: dict, split: str, widths: dict) -> bool:
    return _split_rows(transform_manifest, split) * 4 * sum(widths.values()) <= IN_MEMORY_BYTES


def split_dataset(transform_manifest: dict, split: str, widths: dict, batch_size: int, training: bool, seed: int = 0):
    """Batches of one split. A split whose features fit IN_MEMORY_BYTES is parsed once and its
    batches gathered from memory (an epoch then costs the model's arithmetic only; parsing every
    epoch was most of the pair model's training time); a larger one streams from the TFRecords."""
    import tensorflow as tf

    if not fits_in_memory(transform_manifest, split, widths):
        return make_dataset(transform_manifest, split, widths, batch_size, training, seed)
    columns, labels = read_split(transform_manifest, split, widths)
    rows = int(labels.shape[0])
    indices = tf.data.Dataset.range(rows)
    if training:
        indices = indices.shuffle(rows, seed=seed, reshuffle_each_iteration=True).repeat()

    def gather(batch):
        return tf.nest.map_structure(lambda tensor: tf.gather(tensor, batch), (columns, labels))

    # two batches gathered at a time, kept in order (reads of variables are slow one at a time)
    return indices.batch(batch_size).map(gather, num_parallel_calls=PARSE_THREADS).prefetch(PREFETCH_BATCHES)


def predict_split(model, transform_manifest: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a Keras model over one transformed split."""
    widths = models.model_widths(model)
    labels, probabilities = [], []
    for columns, label in split_dataset(transform_manifest, split, widths, VALIDATION_BATCH_ROWS, training=False):
        probabilities.append(model(columns, training=False).numpy())
        labels.append(label.numpy())
    return np.concatenate(labels), np.vstack(probabilities)
