"""`mmsearch real-data` and the nightly `dvc update`, for real: a DVC repository importing generated
files with the public data's layout from a local HTTP mirror on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mmsearch import dvc_repo, paths, sources
from mmsearch.io import DataError
from mmsearch.stages import pull
from mmsearch.tools.sample_data import SampleSpec, generate
from tests.helpers import PINNED, MirrorServer, dvc, publish, small_config

TINY = SampleSpec(queries=8, products=40, topics=4, values=2, dim=8)


@pytest.fixture
def repo(tmp_path):
    """A git + DVC repository whose data/raw is the bundled sample's kind: a tracked directory."""
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for args in (("init", "-q"), ("config", "core.analytics", "false")):
        assert dvc(repo, *args).returncode == 0
    generate(repo / "data" / "raw", SampleSpec(queries=6, products=30, topics=4, values=2, dim=8, seed=9))
    assert dvc(repo, "add", "-q", "data/raw").returncode == 0
    return repo


@pytest.fixture
def upstream(tmp_path):
    raw = tmp_path / "upstream"
    generate(raw, TINY)
    return raw


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_import_then_update_downloads_only_what_changed(repo, upstream, tmp_path):
    manifest, mirror = tmp_path / "sources.yaml", tmp_path / "mirror"
    publish(mirror, upstream, manifest)
    with MirrorServer(mirror) as server:
        result = sources.import_all(repo, "data/raw", manifest, server.url)
        raw = repo / "data" / "raw"
        assert set(result["imported"]) == set(PINNED) and not (repo / "data" / "raw.dvc").exists()
        for path in PINNED:
            assert (raw / path).read_bytes() == (upstream / path).read_bytes()
            spec = yaml.safe_load((raw / f"{path}.dvc").read_text())
            assert spec["deps"][0]["path"].startswith(f"{server.url}/") and spec["deps"][0]["checksum"]
        assert not (raw / "generator_truth.parquet").exists()  # the sample is gone, not mixed in
        assert not (repo / "data" / sources.STAGING).exists()

        # the nightly refresh, nothing changed upstream: no byte downloaded, the same lineage
        server.bytes_sent = 0
        server.requests.clear()
        lineage = pull.run(out_dir=raw, cfg=small_config(dvc_repo=str(repo)), tags={})
        assert server.bytes_sent == 0, server.requests
        assert lineage["updated"] == [] and set(lineage["sources"]) == set(PINNED)
        assert lineage["sources"][paths.ESCI_FILE].endswith("/shopping_queries_dataset_examples.parquet")

        # one file changes upstream: that one is downloaded, the others are not
        served = next(mirror.rglob("query_features.parquet"))
        generate(tmp_path / "changed", SampleSpec(queries=9, products=40, topics=4, values=2, dim=8, seed=5))
        shutil.copy(tmp_path / "changed" / paths.QUERY_FEATURES_FILE, served)
        server.bytes_sent = 0
        changed = pull.run(out_dir=raw, cfg=small_config(dvc_repo=str(repo)), tags={})
        assert changed["updated"] == [paths.QUERY_FEATURES_FILE]
        assert changed["file_md5"][paths.QUERY_FEATURES_FILE] != lineage["file_md5"][paths.QUERY_FEATURES_FILE]
        assert changed["file_md5"][paths.ESCI_FILE] == lineage["file_md5"][paths.ESCI_FILE]
        assert 0 < server.bytes_sent <= 2 * served.stat().st_size
        assert (raw / paths.QUERY_FEATURES_FILE).read_bytes() == served.read_bytes()

        # importing again with the same pins downloads nothing
        server.bytes_sent = 0
        again = sources.import_all(repo, "data/raw", manifest, server.url)
        assert again["imported"] == {} and server.bytes_sent == 0


def test_a_wrong_checksum_is_refused_and_data_raw_kept(repo, upstream, tmp_path):
    manifest, mirror = tmp_path / "sources.yaml", tmp_path / "mirror"
    publish(mirror, upstream, manifest, tamper=paths.PRODUCT_FEATURES_FILE)
    before = snapshot(repo / "data")
    with MirrorServer(mirror) as server, pytest.raises(DataError, match=r"product_features.parquet: sha256 .* refused"):
        sources.import_all(repo, "data/raw", manifest, server.url)
    assert snapshot(repo / "data") == before


def test_a_wrong_size_is_refused_before_any_download(repo, upstream, tmp_path):
    manifest, mirror = tmp_path / "sources.yaml", tmp_path / "mirror"
    publish(mirror, upstream, manifest)
    spec = yaml.safe_load(manifest.read_text())
    spec["files"][0]["size"] += 1
    manifest.write_text(yaml.safe_dump(spec))
    before = snapshot(repo / "data")
    with MirrorServer(mirror) as server:
        with pytest.raises(DataError, match=r"shopping_queries_dataset_examples.parquet: the server offers"):
            sources.import_all(repo, "data/raw", manifest, server.url)
        assert server.bytes_sent == 0
    assert snapshot(repo / "data") == before


def test_an_unreachable_source_fails_naming_the_url(repo, upstream, tmp_path):
    manifest, mirror = tmp_path / "sources.yaml", tmp_path / "mirror"
    publish(mirror, upstream, manifest)
    before = snapshot(repo / "data")
    dead = "http://127.0.0.1:9/mirror"
    with pytest.raises(dvc_repo.PullError) as error:
        sources.import_all(repo, "data/raw", manifest, dead)
    line = str(error.value)
    assert line.startswith(f"{dead}/amazon-science/esci-data/r1/") and "unreachable" in line and "\n" not in line
    assert snapshot(repo / "data") == before


def test_the_pinned_manifest_names_the_public_files():
    files = {f.path: f for f in sources.load_manifest()}
    assert files[paths.ESCI_FILE].size == 51_286_808
    assert files[paths.QUERY_FEATURES_FILE].size == 26_121_602
    assert files[paths.PRODUCT_FEATURES_FILE].size == 914_932_556
    assert files[paths.ESCI_FILE].url.startswith("https://media.githubusercontent.com/media/amazon-science/esci-data/")
    assert (
        "huggingface.co/datasets/crossingminds/shopping-queries-image-dataset" in files[paths.PRODUCT_FEATURES_FILE].url
    )
    mirrored = {f.path: f.url for f in sources.load_manifest(base_url="http://mirror:8000/x/")}
    assert mirrored[paths.QUERY_FEATURES_FILE] == (
        "http://mirror:8000/x/crossingminds/shopping-queries-image-dataset/main/data/query_features.parquet"
    )
