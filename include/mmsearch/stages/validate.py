"""The raw files against the data contract, and join coverage.

Checks: files exist and are parquet; columns and types; embedding dimension and
finiteness; labels and splits; unique keys; and the share of working-set judgements
that have query (and product) features, which must reach `min_join_coverage`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmsearch import config, paths, raw, sqid
from mmsearch.io import atomic_dir, write_json

log = logging.getLogger(__name__)


def validate(raw_dir: Path, cfg: config.RunConfig) -> dict:
    """Check the raw inputs; return the report, or raise DataError on the first problem."""
    raw_dir = Path(raw_dir)
    esci_path = raw_dir / paths.ESCI_FILE
    esci = raw.read_esci(esci_path)
    mask = raw.working_set(esci_path, esci, cfg)
    queries = sqid.scan_features(sqid.query_table(raw_dir), cfg.embedding_dim, source=cfg.query_features_source)
    pairs = cfg.feature_set == "query_product"
    products = sqid.scan_features(sqid.product_table(raw_dir), cfg.embedding_dim) if pairs else None
    coverage = raw.check_coverage(esci_path, esci, mask, queries.keys, products.keys if products else None, cfg)
    report = {
        "raw_dir": str(raw_dir),
        "feature_set": cfg.feature_set,
        "embedding_dim": cfg.embedding_dim,
        "esci_rows": esci.num_rows,
        "query_feature_rows": len(queries.keys),
        "product_feature_rows": len(products.keys) if products else None,
        "identical_duplicates_collapsed": {
            "query_id": queries.identical_duplicates,
            "product_id": products.identical_duplicates if products else 0,
        },
        "coverage": coverage,
        "min_join_coverage": cfg.min_join_coverage,
    }
    for key, count in report["identical_duplicates_collapsed"].items():
        if count:
            log.warning("%d duplicate %s rows with identical embeddings will be collapsed", count, key)
    return report


def run(raw_dir: Path, *, out_dir: Path, cfg: config.RunConfig, tags: dict) -> dict:
    """Validate and write `validation.json` into `out_dir` (atomically)."""
    report = validate(raw_dir, cfg)
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "validation.json", report)
    coverage, judgements = report["coverage"]["coverage"], report["coverage"]["working_set_judgements"]
    log.info("validated %s: %d working-set judgements, coverage %.4f", raw_dir, judgements, coverage)
    report_path = str(Path(out_dir) / "validation.json")
    return {"validation_report": report_path, "coverage": coverage, "working_set_judgements": judgements}
