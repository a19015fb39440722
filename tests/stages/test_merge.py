"""merge: one row per judgement, every label kept, query-group splits, fixed-size list columns."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmsearch import features, paths
from mmsearch.io import DataError
from mmsearch.stages import merge
from tests.helpers import SMALL, small_config


@pytest.fixture(scope="module")
def merged(small_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "merged"
    manifest = merge.merge(small_raw, out, small_config())
    tables = {split: merge.read_merged(out, split) for split in paths.SPLITS}
    return out, manifest, tables


def _working_set(raw):
    esci = pq.read_table(raw / paths.ESCI_FILE).to_pandas()
    return esci[(esci.product_locale == "us") & (esci.small_version == 1) & (esci.split == "test")]


def test_one_row_per_judgement(small_raw, merged):
    _, manifest, tables = merged
    working = _working_set(small_raw)
    rows = sorted(sum((t.column("example_id").to_pylist() for t in tables.values()), []))
    assert rows == sorted(working.example_id.tolist())
    assert manifest["rows"] == len(working) == sum(c["rows"] for c in manifest["splits"].values())


def test_labels_that_differ_within_a_query_survive(small_raw, merged):
    _, _, tables = merged
    frame = pa.concat_tables(tables.values()).to_pandas()
    working = _working_set(small_raw).assign(query_id=lambda f: f.query_id.astype(str))
    expected = working.groupby("query_id").esci_label.apply(sorted)
    got = frame.groupby("query_id").esci_label.apply(sorted)
    assert (got.loc[expected.index] == expected).all()
    assert (frame.groupby("query_id").esci_label.nunique() > 1).sum() > len(expected) // 2
    assert (frame.label == frame.esci_label.map(features.LABEL_IDS)).all()  # I=0, C=1, S=2, E=3


def test_splits_are_disjoint_query_groups(merged):
    _, manifest, tables = merged
    queries = {split: set(t.column("query_id").to_pylist()) for split, t in tables.items()}
    assert not queries["train"] & queries["val"] and not queries["train"] & queries["test"]
    assert not queries["val"] & queries["test"]
    assert all(manifest["splits"][s]["queries"] == len(queries[s]) for s in paths.SPLITS)
    assert all(t.column("split").to_pylist() == [s] * t.num_rows for s, t in tables.items())


def test_embeddings_are_fixed_size_lists_equal_to_the_sources(small_raw, merged):
    _, _, tables = merged
    table = tables["train"]
    for name in features.EMBEDDING_COLUMNS["query_product"]:
        assert table.schema.field(name).type == pa.list_(pa.float32(), SMALL.dim)
    products = pq.read_table(small_raw / paths.PRODUCT_FEATURES_FILE).to_pandas().set_index("product_id")
    row = table.slice(5, 1).to_pylist()[0]
    np.testing.assert_array_equal(
        row["product_image_embedding"], products.loc[row["product_id"], "clip_image_features"]
    )


def test_split_is_deterministic_for_a_seed(small_raw, merged, tmp_path):
    _, manifest, _ = merged
    again = merge.merge(small_raw, tmp_path / "again", small_config())
    other = merge.merge(small_raw, tmp_path / "other", small_config(seed=5))
    assert again["splits"] == manifest["splits"]
    assert other["splits"] != manifest["splits"]


def test_query_feature_set_leaves_product_columns_out(small_raw, tmp_path):
    manifest = merge.merge(small_raw, tmp_path / "m", small_config(feature_set="query"))
    assert manifest["embedding_columns"] == [features.QUERY_EMBEDDING]
    assert features.PRODUCT_TEXT_EMBEDDING not in merge.read_merged(tmp_path / "m", "test").schema.names


def test_manifest_counts_per_split_and_label(merged):
    out, manifest, tables = merged
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    for split, table in tables.items():
        labels, counts = np.unique(table.column("esci_label").to_numpy(zero_copy_only=False), return_counts=True)
        assert manifest["splits"][split]["labels"] == dict(zip(labels.tolist(), counts.tolist()))


def test_empty_split_fails_and_leaves_nothing(raw_copy, tmp_path):
    esci = pq.read_table(raw_copy / paths.ESCI_FILE)
    two_queries = np.isin(esci.column("query_id").to_numpy(), _working_set(raw_copy).query_id.unique()[:2])
    pq.write_table(esci.filter(pa.array(two_queries)), raw_copy / paths.ESCI_FILE)
    out = tmp_path / "merged"
    with pytest.raises(DataError, match="the train split is empty after the group split"):
        merge.merge(raw_copy, out, small_config())  # one query to test, one to val, none to train
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_class_absent_from_the_train_split_fails_and_leaves_nothing(raw_copy, tmp_path):
    esci = pq.read_table(raw_copy / paths.ESCI_FILE)
    labels = esci.column("esci_label").to_numpy(zero_copy_only=False)
    relabelled = np.where(labels == "C", "S", labels)
    pq.write_table(
        esci.set_column(esci.schema.get_field_index("esci_label"), "esci_label", pa.array(relabelled)),
        raw_copy / paths.ESCI_FILE,
    )
    out = tmp_path / "merged"
    with pytest.raises(DataError, match=r"column 'esci_label': labels \['C'\] are absent from the train split"):
        merge.merge(raw_copy, out, small_config())
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
