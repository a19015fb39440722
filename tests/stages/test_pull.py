"""pull: a real `dvc pull` from a local-directory remote, judged by the files on disk."""

import os
import shutil
import subprocess

import pytest

from mmsearch import config, paths
from mmsearch.dvc_repo import PullError
from mmsearch.stages.pull import describe_untracked, pull
from mmsearch.tools.sample_data import TRUTH_FILE, SampleSpec
from tests import readme
from tests.helpers import REPO_ROOT, dvc, generate, make_dvc_repo

TINY = SampleSpec(queries=8, products=40, topics=4, values=2, dim=8)


@pytest.fixture
def repo(tmp_path):
    return make_dvc_repo(tmp_path, TINY)


def test_pull_restores_every_file_and_reports_hashes(repo):
    result = pull(repo)
    raw = repo / "data" / "raw"
    assert result["raw_dir"] == str(raw)
    assert set(result["file_md5"]) == {
        paths.ESCI_FILE,
        paths.QUERY_FEATURES_FILE,
        paths.PRODUCT_FEATURES_FILE,
        TRUTH_FILE,
    }
    assert all((raw / name).stat().st_size > 0 for name in result["file_md5"])
    assert result["dvc_md5"].endswith(".dir") and result["dvc_exit_code"] == 0


def test_missing_object_in_the_remote_names_the_missing_file(repo, tmp_path):
    product_md5 = _md5_of(repo, paths.PRODUCT_FEATURES_FILE)
    (tmp_path / "remote" / "files" / "md5" / product_md5[:2] / product_md5[2:]).unlink()
    with pytest.raises(PullError) as error:
        pull(repo, attempts=1)
    message = str(error.value)
    # DVC checks out none of a directory with a missing object: all of it is missing, one is to blame
    assert (
        "did not restore data/raw/generator_truth.parquet, data/raw/shopping_queries_dataset_examples.parquet, "
        in message
    )
    assert "(missing from the remote: sqid/product_features.parquet)" in message
    assert "dvc exit code 1" in message


def test_remote_gone_fails_even_if_dvc_says_up_to_date(repo, tmp_path):
    shutil.rmtree(tmp_path / "remote")
    with pytest.raises(PullError, match=r"did not restore data/raw \(the remote has no listing for it\)"):
        pull(repo, attempts=1)


def test_unreachable_remote_is_retried_then_named(repo, caplog):
    from tests.helpers import dvc

    assert dvc(repo, "remote", "add", "-f", "-d", "dead", "http://127.0.0.1:9/dvc").returncode == 0
    with pytest.raises(PullError, match=r"from remote 'default' did not restore data/raw .*dvc exit code 1"):
        pull(repo, attempts=2, wait_seconds=0.1)
    assert "dvc pull failed (attempt 1)" in caplog.text


def test_concurrent_pulls_in_one_repo_both_succeed(repo):
    """DVC's lock makes one pull wait (we retry on it) rather than both writing the workspace."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "mmsearch.cli", "pull", "--set", f"dvc_repo={repo}", "--set", "dvc_pull_attempts=5"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert pull(repo, attempts=1)["file_md5"]


def _md5_of(repo, relpath):
    # the pushed directory listing, read from the remote (the cache was removed)
    import json

    import yaml

    dir_md5 = yaml.safe_load((repo / "data" / "raw.dvc").read_text())["outs"][0]["md5"]
    listing = repo.parent / "remote" / "files" / "md5" / dir_md5[:2] / dir_md5[2:]
    return {e["relpath"]: e["md5"] for e in json.loads(listing.read_text())}[relpath]


def test_a_raw_directory_given_directly_is_described_by_its_own_md5s(repo):
    pulled = pull(repo, attempts=1)
    described = describe_untracked(repo / "data" / "raw")
    assert described["file_md5"] == pulled["file_md5"]  # the same hashes DVC records
    assert described["dvc_md5"] == "not tracked by DVC (raw_data_dir)"


def test_a_raw_data_dir_that_is_missing_or_empty_is_named(tmp_path):
    from mmsearch.io import DataError
    from mmsearch.stages import pull as stage

    for directory, problem in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "holds no file")):
        cfg = config.RunConfig(raw_data_dir=str(directory))
        with pytest.raises(DataError, match=f"^{directory}: raw_data_dir {problem}"):
            stage.run(out_dir=directory, cfg=cfg, tags={})


def test_the_readme_pushes_data_of_your_own_to_a_remote_of_your_own(tmp_path):
    """The README's own-remote block, pasted in a clone of this checkout with files of one's own in
    data/raw: the remote beside the clone then holds everything the workspace tracks."""
    clone = tmp_path / "mmsearch"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True)
    (clone / ".venvs").symlink_to(REPO_ROOT / ".venvs")
    generate(clone / "data" / "raw", TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    result = readme.run(readme.block("own-dvc-remote"), env, cwd=clone, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote = storage" in (clone / ".dvc" / "config").read_text()
    synced = dvc(clone, "status", "--cloud")
    assert "in sync" in synced.stdout, synced.stdout + synced.stderr
    assert (tmp_path / "mmsearch-dvc-storage" / "files" / "md5").is_dir()
