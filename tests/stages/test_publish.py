"""publish: the product file, checked, becomes the catalogue the re-ranking service serves; a bad
one is refused in one line and the published catalogue stays as it was."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmsearch import catalogue, paths
from mmsearch.io import DataError
from mmsearch.stages import publish, pull
from tests.helpers import SMALL, small_config
from tests.stages.test_validate import _embeddings, _nan_in_row_3, _rewrite

PRODUCTS = paths.PRODUCT_FEATURES_FILE


def _published(raw_dir, root, run_id="run-1") -> dict:
    return publish.publish(pull.describe_untracked(raw_dir), small_config(), run_id, root)


def _with_one_more_product(raw_dir, copy_to, product_id: str):
    """A copy of `raw_dir` whose product file has one product more (the first one's vectors)."""
    import pyarrow as pa

    shutil.copytree(raw_dir, copy_to)
    table = pq.read_table(copy_to / PRODUCTS)
    extra = table.slice(0, 1).set_column(0, "product_id", pa.array([product_id]))
    pq.write_table(pa.concat_tables([table, extra]), copy_to / PRODUCTS)
    return copy_to


def test_a_checked_product_file_is_published_under_its_md5_once(raw_copy, tmp_path):
    root = tmp_path / "catalogue"
    first = _published(raw_copy, root)
    md5 = pull.describe_untracked(raw_copy)["file_md5"][PRODUCTS]
    assert first["published"] and first["md5"] == md5 and first["products"] == SMALL.products
    assert first["run_id"] == "run-1" and first["path"] == str(root / md5) and first["rows"] == SMALL.products
    ids, text, image = catalogue.open_arrays(root / md5)  # what the service maps: the file's ids and vectors
    products = pq.read_table(raw_copy / PRODUCTS).to_pandas()
    assert list(ids) == products.product_id.tolist()
    np.testing.assert_array_equal(image, np.stack(products.clip_image_features.to_numpy()).astype(np.float32))
    np.testing.assert_array_equal(text[:, :3], np.stack(products.clip_text_features.to_numpy())[:, :3])
    assert catalogue.published(root)["md5"] == md5
    again = _published(raw_copy, root, "run-2")
    assert not again["published"] and "is already the published one" in again["reason"]
    assert catalogue.published(root)["run_id"] == "run-1"  # nothing rewritten


def test_a_new_product_file_is_published_in_its_place_and_older_ones_pruned(raw_copy, tmp_path):
    root = tmp_path / "catalogue"
    md5s = []
    for number in range(3):
        raw_dir = _with_one_more_product(raw_copy, tmp_path / f"raw-{number}", f"NEW{number}")
        md5s.append(_published(raw_dir, root, f"run-{number}")["md5"])
    assert catalogue.published(root)["md5"] == md5s[-1]
    assert catalogue.published(root)["products"] == SMALL.products + 1
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(md5s[1:])  # the newest two kept


BAD_PRODUCT_FILES = {
    "NaN": (lambda t: _embeddings(t, "clip_image_features", _nan_in_row_3), "column 'clip_image_features': has NaN"),
    "wrong width": (
        lambda t: _embeddings(t, "clip_text_features", lambda m: m[:, :-1]),
        f"column 'clip_text_features': embeddings must have {SMALL.dim} values",
    ),
    "missing column": (
        lambda t: t.drop_columns(["clip_image_features"]),
        "column 'clip_image_features': required column is missing",
    ),
}


@pytest.mark.parametrize("case", BAD_PRODUCT_FILES, ids=list(BAD_PRODUCT_FILES))
def test_a_bad_product_file_is_refused_and_the_published_one_stays(case, raw_copy, small_raw, tmp_path):
    root = tmp_path / "catalogue"
    good = _published(small_raw, root)
    mutate, message = BAD_PRODUCT_FILES[case]
    _rewrite(raw_copy / PRODUCTS, mutate)
    with pytest.raises(DataError) as error:
        _published(raw_copy, root, "run-bad")
    assert f"{raw_copy / PRODUCTS}: {message}" in str(error.value) and "\n" not in str(error.value)
    assert catalogue.published(root)["md5"] == good["md5"]
    assert sorted(p.name for p in root.iterdir()) == sorted([good["md5"], catalogue.POINTER])  # nothing half-written


def test_the_publish_command_refuses_a_bad_file_with_the_same_line(raw_copy, tmp_path):
    _rewrite(raw_copy / PRODUCTS, lambda t: _embeddings(t, "clip_text_features", _nan_in_row_3))
    env_home = tmp_path / "home"
    command = [
        sys.executable,
        "-m",
        "mmsearch.cli",
        "publish",
        "--lineage",
        json.dumps({"raw_dir": str(raw_copy)}),
        "--out",
        str(tmp_path / "o"),
    ]
    result = subprocess.run(
        [*command, "--set", f"embedding_dim={SMALL.dim}"],
        capture_output=True,
        text=True,
        env={"MMSEARCH_HOME": str(env_home), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(
        f"mmsearch publish: error: {raw_copy / PRODUCTS}: column 'clip_text_features'"
    )
    assert not (env_home / "catalogue" / catalogue.POINTER).exists() and not (tmp_path / "o").exists()


def test_the_publish_command_publishes_and_reports(raw_copy, tmp_path):
    env_home = tmp_path / "home"
    command = [
        sys.executable,
        "-m",
        "mmsearch.cli",
        "publish",
        "--lineage",
        json.dumps({"raw_dir": str(raw_copy)}),
        "--out",
        str(tmp_path / "o"),
    ]
    result = subprocess.run(
        [*command, "--set", f"embedding_dim={SMALL.dim}"],
        capture_output=True,
        text=True,
        env={"MMSEARCH_HOME": str(env_home), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["published"] and printed == json.loads((tmp_path / "o" / "publish.json").read_text())
    assert catalogue.published(env_home / "catalogue")["md5"] == printed["md5"]


def test_a_raw_data_dir_run_publishes_nothing(raw_copy, tmp_path):
    lineage = pull.describe_untracked(raw_copy)
    found = publish.publish(lineage, small_config(raw_data_dir=str(raw_copy)), "run-x", tmp_path / "catalogue")
    assert not found["published"] and "raw_data_dir" in found["reason"]
    assert not (tmp_path / "catalogue").exists()
