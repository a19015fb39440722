"""drift: the statistics on merged data, the same data against itself and against a moved modality."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmsearch import paths
from mmsearch.io import read_json
from mmsearch.stages import drift, merge
from tests.helpers import small_config

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def merged(small_raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    cfg = small_config()
    merge.merge(small_raw, root / "merged", cfg)
    moved_raw = root / "moved-raw"
    import shutil

    shutil.copytree(small_raw, moved_raw)
    products = pq.read_table(moved_raw / paths.PRODUCT_FEATURES_FILE)
    column = products.column("clip_image_features").combine_chunks()
    values = column.values.to_numpy().reshape(len(column), -1) + np.float32(0.5)  # another image encoder
    moved = pa.ListArray.from_arrays(column.offsets, pa.array(values.ravel()))
    pq.write_table(products.set_column(2, "clip_image_features", moved), moved_raw / paths.PRODUCT_FEATURES_FILE)
    merge.merge(moved_raw, root / "moved", cfg)
    return root


def test_the_same_data_shows_no_drift(merged):
    report, current, reference = drift.compare(merged / "merged", merged / "merged")
    assert report["score"] == 0.5  # duplicates push the cross-validated AUC below 0.5: clipped
    assert report["labels"]["chi2_pvalue"] > 0.99
    rows = read_json(merged / "merged" / "manifest.json")["rows"]
    assert report["rows"] == [rows, rows]  # fewer rows than the sample size: all of them
    for found in report["modalities"].values():
        assert found["mean_cosine_distance"] < 1e-6 and found["norm_ks_statistic"] == 0


def test_a_moved_modality_is_found_and_named(merged, tmp_path):
    report, current, reference = drift.compare(merged / "moved", merged / "merged")
    image = report["modalities"]["product_image_embedding"]
    assert image["classifier_auc"] > 0.9 and image["norm_ks_pvalue"] < 0.01
    assert report["modalities"]["query_embedding"]["classifier_auc"] < 0.6  # the others did not move
    assert report["score"] == image["classifier_auc"]
    drift.plot(report, current, reference, tmp_path / "drift.png")
    assert (tmp_path / "drift.png").stat().st_size > 10_000


def test_sampling_takes_every_kth_row_in_bounded_memory(merged):
    rows = read_json(merged / "merged" / "manifest.json")["rows"]
    sampled = drift.sample(merged / "merged", ["label", "query_embedding"], rows=rows // 4)
    step = -(-rows // (rows // 4))  # every k-th row, k = ceil(rows / wanted): at most the rows wanted
    assert len(sampled["label"]) == -(-rows // step) <= rows // 4
    assert sampled["query_embedding"].shape == (len(sampled["label"]), 16)
