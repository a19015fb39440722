"""Publish the product catalogue the re-ranking service serves: the raw product file, checked
against the data contract, written as the arrays the service maps (ids, text and image vectors)
under the file's md5, then named the published one in a single rename.

The training DAG runs it right after `pull_data`, beside the nothing-new check, so a new product
file reaches the service on the night it arrives, whether or not that night trains, and whether
or not its model becomes champion. A file that fails the checks is never published: the task
fails in one line and the service keeps the catalogue it has. Only the data path publishes: a run
given `raw_data_dir` (files used as they are, an experiment) publishes nothing.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from mmsearch import catalogue, config, dvc_repo, paths, sqid
from mmsearch.io import DataError, atomic_dir, read_json, write_json

log = logging.getLogger(__name__)

KEEP = 2  # catalogues kept on disk: the one published and the one before it (what a rollback of data needs)


def _prune(root: Path, keep: int, published: str) -> list[str]:
    """Delete all but the `keep` newest catalogues; never the `published` one."""
    found = sorted((read_json(path)["published_at"], path.parent) for path in root.glob(f"*/{catalogue.MANIFEST}"))
    removed = [directory for _, directory in found[:-keep] if directory.name != published]
    for directory in removed:
        shutil.rmtree(directory, ignore_errors=True)
    return [directory.name for directory in removed]


def publish(lineage: dict, cfg: config.RunConfig, run_id: str = "", root: Path | None = None) -> dict:
    """Check the product file of `lineage` and publish it, unless it is published already."""
    if cfg.raw_data_dir:
        reason = "nothing published: raw_data_dir is a directory used as it is, not the data path (DVC)"
        return {"published": False, "reason": reason}
    root = Path(root or catalogue.catalogue_root())
    source = Path(lineage["raw_dir"]) / paths.PRODUCT_FEATURES_FILE
    md5 = lineage.get("file_md5", {}).get(paths.PRODUCT_FEATURES_FILE) or dvc_repo.file_digest(source)
    current = catalogue.published(root)
    if current and current["md5"] == md5:
        since = f"published {current['published_at']} by run {current['run_id'] or '(none)'}"
        return {**current, "published": False, "reason": f"catalogue {md5} is already the published one ({since})"}
    products = sqid.scan_features(sqid.product_table(Path(lineage["raw_dir"])), cfg.embedding_dim)
    manifest = {
        "md5": md5,
        "products": len(products.keys),
        "published_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "run_id": run_id,
        "source": str(source),
    }
    if not (root / md5 / catalogue.MANIFEST).exists():
        with atomic_dir(root / md5) as tmp:
            manifest["rows"] = catalogue.write_arrays(source, tmp, cfg.embedding_dim)
            if dvc_repo.file_digest(source) != md5:
                raise DataError(source, f"changed after it was pulled (its md5 is no longer {md5}); run again")
            write_json(tmp / catalogue.MANIFEST, manifest)
    else:  # published before (the data went back to an earlier file): checked again above, named again
        manifest["rows"] = read_json(root / md5 / catalogue.MANIFEST)["rows"]
        write_json(root / md5 / catalogue.MANIFEST, manifest)
    write_json(root / catalogue.POINTER, manifest)
    removed = _prune(root, KEEP, md5)
    log.info("published catalogue %s: %d products from %s", md5, manifest["products"], source)
    return {**catalogue.published(root), "published": True, "removed": removed}


def run(lineage: dict, *, out_dir: Path, cfg: config.RunConfig, tags: dict) -> dict:
    """Publish the catalogue of the pulled data (`lineage`: pull's result); its report in
    `out_dir`/publish.json."""
    result = publish(lineage, cfg, tags.get("run_id", ""))
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "publish.json", result)
    return result
