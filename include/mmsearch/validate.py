"""The raw files against the data contract, and join coverage.

Checks: files exist and are parquet; columns and types; embedding dimension and
finiteness; labels and splits; unique keys; and the share of working-set judgements
that have query (and product) features, which must reach `min_join_coverage`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mmsearch import config as C
from mmsearch import raw
from mmsearch.io import DataError, atomic_dir, write_json

log = logging.getLogger(__name__)


def coverage_report(esci, mask, query_keys, product_keys) -> dict:
    """How many working-set judgements have query features, product features, both."""
    query_ids = esci.column("query_id").to_numpy()[mask].astype(str)
    product_ids = esci.column("product_id").to_numpy(zero_copy_only=False)[mask].astype(str)
    has_query = np.isin(query_ids, query_keys)
    has_product = np.isin(product_ids, product_keys) if product_keys is not None else np.ones_like(has_query)
    both = has_query & has_product
    total = int(mask.sum())
    return {
        "working_set_judgements": total,
        "with_query_features": int(has_query.sum()),
        "with_product_features": int(has_product.sum()),
        "with_all_features": int(both.sum()),
        "missing_query_features": int((~has_query).sum()),
        "missing_product_features": int((~has_product).sum()),
        "coverage": float(both.mean()) if total else 0.0,
        "example_ids_missing_features": esci.column("example_id").to_numpy()[mask][~both][:5].tolist(),
    }


def validate(raw_dir: Path, cfg: C.RunConfig) -> dict:
    """Check the raw inputs; return the report, or raise DataError on the first problem."""
    raw_dir = Path(raw_dir)
    esci_path = raw_dir / C.ESCI_FILE
    esci = raw.read_esci(esci_path)
    mask = raw.working_set_mask(esci, cfg)
    if not mask.any():
        raise DataError(
            esci_path,
            f"no rows in the working set (locale={cfg.esci_filter_locale!r}, "
            f"small_version={cfg.esci_filter_small_version}, split={cfg.esci_filter_split!r})",
        )
    queries = raw.scan_features(raw.query_table(raw_dir), cfg.embedding_dim, source=cfg.query_features_source)
    products = None
    if cfg.feature_set == "query_product":
        products = raw.scan_features(raw.product_table(raw_dir), cfg.embedding_dim)
    coverage = coverage_report(esci, mask, queries.keys, products.keys if products else None)
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
    if coverage["coverage"] < cfg.min_join_coverage:
        raise DataError(
            esci_path,
            f"join coverage {coverage['coverage']:.3f} is below min_join_coverage {cfg.min_join_coverage}: "
            f"{coverage['missing_query_features']} of {coverage['working_set_judgements']} working-set judgements "
            f"lack query features, {coverage['missing_product_features']} lack product features",
            column="query_id/product_id",
            rows=[f"example_id {e}" for e in coverage["example_ids_missing_features"]],
        )
    return report


def run(raw_dir: Path, out_dir: Path, cfg: C.RunConfig) -> dict:
    """Validate and write `validation.json` into `out_dir` (atomically)."""
    report = validate(raw_dir, cfg)
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "validation.json", report)
    log.info(
        "validated %s: %d working-set judgements, coverage %.4f",
        raw_dir,
        report["coverage"]["working_set_judgements"],
        report["coverage"]["coverage"],
    )
    return {
        "validation_report": str(Path(out_dir) / "validation.json"),
        "coverage": report["coverage"]["coverage"],
        "working_set_judgements": report["coverage"]["working_set_judgements"],
    }
