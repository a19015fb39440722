"""Stage 3, merge: every working-set judgement joined with its CLIP embeddings, split by query.

One row per judgement (labels differ between products of a query, so rows are never
reduced to one per query). Splits are by query group: no query is in two splits.
Output: `<out>/<split>/part-NNNNN.parquet` with fixed-size list embedding columns,
and `manifest.json` with the row counts per split and label.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmsearch import config as C
from mmsearch import raw
from mmsearch.io import DataError, atomic_dir, write_json

log = logging.getLogger(__name__)

SHARD_ROWS = 50_000
ROW_GROUP_ROWS = 2_000


def split_queries(query_ids: np.ndarray, cfg: C.RunConfig) -> dict[str, str]:
    """Assign each query id to train/val/test, deterministically for cfg.seed."""
    unique = np.unique(query_ids)
    order = np.random.default_rng(cfg.seed).permutation(len(unique))
    n_test = max(1, int(round(len(unique) * cfg.test_fraction)))
    n_val = max(1, int(round(len(unique) * cfg.val_fraction)))
    names = np.full(len(unique), "train", dtype=object)
    names[order[:n_test]] = "test"
    names[order[n_test : n_test + n_val]] = "val"
    return dict(zip(unique.tolist(), names.tolist()))


def fixed_size_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])


def _lookup(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row index of each wanted key in keys, -1 where absent."""
    order = np.argsort(keys)
    sorted_keys = keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, wanted), 0, len(keys) - 1)
    found = sorted_keys[pos] == wanted
    return np.where(found, order[pos], -1)


def _check_splits(counts: dict, esci_path: Path) -> None:
    for split in C.SPLITS:
        if counts[split]["rows"] == 0:
            raise DataError(esci_path, f"the {split} split is empty after the group split", column="query_id")
    absent = [label for label in C.LABEL_IDS if counts["train"]["labels"].get(label, 0) == 0]
    if absent:
        raise DataError(esci_path, f"labels {absent} are absent from the train split", column="esci_label")


def merge(raw_dir: Path, out_dir: Path, cfg: C.RunConfig) -> dict:
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    esci_path = raw_dir / C.ESCI_FILE
    esci = raw.read_esci(esci_path, ["example_id", "query_id", "product_id", "esci_label"] + ["product_locale", "small_version", "split"])
    mask = raw.working_set_mask(esci, cfg)
    example_id = esci.column("example_id").to_numpy()[mask]
    query_id = esci.column("query_id").to_numpy()[mask].astype(str)  # ESCI int -> SQID string
    product_id = esci.column("product_id").to_numpy(zero_copy_only=False)[mask].astype(str)
    esci_label = esci.column("esci_label").to_numpy(zero_copy_only=False)[mask].astype(str)

    queries = raw.scan_features(raw.query_table(raw_dir), cfg.embedding_dim, keep=True, source=cfg.query_features_source)
    q_row = _lookup(queries.keys, query_id)
    joined = q_row >= 0
    columns = {C.QUERY_EMBEDDING: (queries.embeddings["clip_text_features"], q_row)}
    if cfg.feature_set == "query_product":
        products = raw.scan_features(raw.product_table(raw_dir), cfg.embedding_dim, keep=True)
        p_row = _lookup(products.keys, product_id)
        joined &= p_row >= 0
        columns[C.PRODUCT_TEXT_EMBEDDING] = (products.embeddings["clip_text_features"], p_row)
        columns[C.PRODUCT_IMAGE_EMBEDDING] = (products.embeddings["clip_image_features"], p_row)

    split_of = split_queries(query_id[joined], cfg)
    split = np.array([split_of.get(q, "") for q in query_id])
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for name in C.SPLITS:
            rows = np.flatnonzero(joined & (split == name))
            counts[name] = _write_split(tmp / name, rows, example_id, query_id, product_id, esci_label, columns)
        _check_splits(counts, esci_path)
        manifest = {
            "merged_dir": str(out_dir),
            "feature_set": cfg.feature_set,
            "embedding_dim": cfg.embedding_dim,
            "embedding_columns": list(columns),
            "working_set_judgements": int(mask.sum()),
            "dropped_without_features": int((~joined).sum()),
            "rows": sum(c["rows"] for c in counts.values()),
            "splits": counts,
            "seed": cfg.seed,
        }
        write_json(tmp / "manifest.json", manifest)
    log.info("merged %d judgements into %s: %s", manifest["rows"], out_dir,
             {k: v["rows"] for k, v in counts.items()})
    return manifest


def _write_split(directory: Path, rows, example_id, query_id, product_id, esci_label, columns) -> dict:
    directory.mkdir(parents=True)
    # keep each query's judgements together, in a stable order
    rows = rows[np.lexsort((example_id[rows], query_id[rows]))]
    for shard, start in enumerate(range(0, max(len(rows), 1), SHARD_ROWS)):
        part = rows[start : start + SHARD_ROWS]
        table = pa.table(
            {
                "example_id": pa.array(example_id[part], pa.int64()),
                "query_id": pa.array(query_id[part], pa.string()),
                "product_id": pa.array(product_id[part], pa.string()),
                "esci_label": pa.array(esci_label[part], pa.string()),
                "label": pa.array([C.LABEL_IDS[x] for x in esci_label[part]], pa.int64()),
                "split": pa.array([directory.name] * len(part), pa.string()),
                **{name: fixed_size_list(matrix[index[part]]) for name, (matrix, index) in columns.items()},
            }
        )
        pq.write_table(table, directory / f"part-{shard:05d}.parquet", row_group_size=ROW_GROUP_ROWS)
    labels, label_counts = np.unique(esci_label[rows], return_counts=True)
    return {
        "rows": int(len(rows)),
        "queries": int(len(np.unique(query_id[rows]))),
        "labels": {str(k): int(v) for k, v in zip(labels, label_counts)},
    }


def read_merged(merged_dir: Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """All shards of one split, as one table (for tests, evaluation and small data)."""
    return pq.read_table(Path(merged_dir) / split, columns=columns)
