"""transform: the real Beam pipeline (in a child process, as the DAG runs it), checked against numpy."""

import shutil

import numpy as np
import pytest

from mmsearch import features, representation
from mmsearch.io import read_json
from mmsearch.stages import merge, transform
from tests.helpers import SMALL, small_config

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def transformed(small_raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("transform")
    cfg = small_config()
    merge.merge(small_raw, root / "merged", cfg)
    result = transform.run(root / "merged", out_dir=root / "transform", cfg=cfg, tags={})
    assert result == {"transform_dir": str(root / "transform"), "rows_out": result["rows_out"]}
    return root, read_json(root / "transform" / "manifest.json")


def _read_examples(manifest, split):
    import tensorflow as tf
    import tensorflow_transform as tft

    spec = tft.TFTransformOutput(manifest["transform_graph"]).transformed_feature_spec()
    files = sorted(str(p) for p in (transform.examples_dir(manifest["transform_dir"], split)).glob("*"))
    rows = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files)]
    return {name: np.stack([r[name].numpy() for r in rows]) for name in spec}


def _matrix(table, name):
    column = table.column(name).combine_chunks()
    return column.values.to_numpy().reshape(len(column), -1).astype(np.float64)


def _zscore(values, train_values):
    return (values - train_values.mean(axis=0)) / train_values.std(axis=0)


def test_tfx_layout_and_row_counts(transformed):
    root, manifest = transformed
    graph = root / "transform" / "transform_graph"
    for part in ("transform_fn/saved_model.pb", "transformed_metadata/schema.pbtxt", "metadata/schema.pbtxt"):
        assert (graph / part).exists(), part
    assert manifest["rows_in"] == manifest["rows_out"] == manifest["rows_expected"]
    assert manifest["analysed_rows"] == manifest["rows_expected"]["train"]  # statistics from train only
    assert not (root / "transform" / "tmp").exists()


def _cosine(table, left, right):
    x, y = _matrix(table, left), _matrix(table, right)
    return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)


def _assert_same_rows(got_columns, expected_columns, atol: float) -> None:
    """The same rows in any order (Beam promises no output order): each row of one side matched
    to one row of the other (an assignment on the largest column difference), all within atol.
    A sort would pair the wrong rows where two rows' leading values differ by less than atol."""
    from scipy.optimize import linear_sum_assignment

    def matrix(columns):
        return np.column_stack([c.reshape(len(c), -1) for c in columns]).astype(np.float64)

    got, expected = matrix(got_columns), matrix(expected_columns)
    assert got.shape == expected.shape
    distance = np.stack([np.abs(expected - row).max(axis=1) for row in got])
    rows, matched = linear_sum_assignment(distance)
    worst = int(np.argmax(distance[rows, matched]))
    assert distance[rows, matched].max() <= atol, (got[rows[worst]], expected[matched[worst]])


def test_z_scores_and_cosines_match_numpy(transformed):
    root, manifest = transformed
    train = merge.read_merged(root / "merged", "train")
    test = merge.read_merged(root / "merged", "test")
    examples = _read_examples(manifest, "test")
    names = [features.QUERY_EMBEDDING]  # the products' z-scores are not written: no model reads them
    assert not {*features.PRODUCT_EMBEDDINGS} & set(examples)
    expected = [_zscore(_matrix(test, n), _matrix(train, n)) for n in names]
    for _name, (left, right) in features.COSINES.items():
        expected += [_zscore(_cosine(test, left, right), _cosine(train, left, right)), _cosine(test, left, right)]
    expected.append(test.column(features.LABEL).to_numpy())
    got = [examples[n] for n in names] + [
        examples[n] for name in features.COSINES for n in (name, features.raw_cosine(name))
    ]
    got.append(examples[features.LABEL])
    _assert_same_rows(got, expected, atol=2e-4)


def test_whitened_embeddings_have_unit_variance_and_match_numpy(transformed):
    root, manifest = transformed
    train = merge.read_merged(root / "merged", "train")
    names = list(features.EMBEDDING_COLUMNS["query_product"])
    examples = _read_examples(manifest, "train")
    stacked = np.vstack([examples[features.WHITENED[n]] for n in names])
    assert stacked.shape[1] == features.whitened_width(SMALL.dim)
    # uncorrelated, unit variance: the covariance the PCA came from, whitened, is the identity
    np.testing.assert_allclose(np.cov(stacked, rowvar=False, bias=True), np.eye(stacked.shape[1]), atol=0.02)
    # the same whitening in numpy; a component's sign is arbitrary, cosines do not see it
    raw = {n: _matrix(train, n) for n in names}
    stacked_raw = np.vstack(list(raw.values()))
    values, vectors = np.linalg.eigh(np.cov(stacked_raw, rowvar=False, bias=True))
    top = np.argsort(values)[::-1][: features.whitened_width(SMALL.dim)]
    white = {n: (raw[n] - stacked_raw.mean(axis=0)) @ vectors[:, top] / np.sqrt(values[top]) for n in names}
    unit = {n: white[n] / np.linalg.norm(white[n], axis=1, keepdims=True) for n in names}
    expected = [np.sum(unit[left] * unit[right], axis=1) for left, right in features.COSINES.values()]
    got = list(representation.whitened_cosines(examples, features.whitened_width(SMALL.dim)).T)
    label = train.column(features.LABEL).to_numpy()
    _assert_same_rows([*got, examples[features.LABEL]], [*expected, label], atol=2e-3)


def test_raw_schema_has_the_raw_features(transformed):
    from tensorflow_transform.tf_metadata import metadata_io

    _, manifest = transformed
    schema = metadata_io.read_metadata(f"{manifest['transform_graph']}/metadata").schema
    assert {f.name for f in schema.feature} == {*features.EMBEDDING_COLUMNS["query_product"], features.LABEL}


def test_incomplete_outputs_are_not_complete(transformed, tmp_path):
    root, _ = transformed
    copy = tmp_path / "transform"
    shutil.copytree(root / "transform", copy)
    assert transform.complete_outputs(copy) is not None
    shutil.rmtree(transform.examples_dir(copy, "val"))
    assert transform.complete_outputs(copy) is None


def test_a_failed_child_fails_the_stage_and_leaves_no_output(tmp_path):
    out = tmp_path / "transform"
    with pytest.raises(RuntimeError, match="transform failed .* outputs incomplete"):
        transform.run(tmp_path / "no-such-merged-dir", out_dir=out, cfg=small_config(), tags={})
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
