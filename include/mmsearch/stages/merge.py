"""Every working-set judgement joined with its CLIP embeddings, split by query.

One row per judgement (labels differ between products of a query, so rows are never
reduced to one per query). Splits are by query group: no query is in two splits.
Output: `<out>/<split>/part-NNNNN.parquet` with fixed-size list embedding columns,
and `manifest.json` with the row counts per split and label.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmsearch import config, features, paths, raw, sqid
from mmsearch.io import DataError, atomic_dir, write_json

log = logging.getLogger(__name__)

SHARD_ROWS = 50_000
ROW_GROUP_ROWS = 2_000


def split_queries(query_ids: np.ndarray, cfg: config.RunConfig) -> dict[str, str]:
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
    for split in paths.SPLITS:
        if counts[split]["rows"] == 0:
            raise DataError(esci_path, f"the {split} split is empty after the group split", column="query_id")
    absent = [label for label in features.LABEL_IDS if counts["train"]["labels"].get(label, 0) == 0]
    if absent:
        raise DataError(esci_path, f"labels {absent} are absent from the train split", column="esci_label")


class _SplitWriter:
    """One split's parquet shards, written as rows arrive; a new shard every SHARD_ROWS rows."""

    def __init__(self, directory: Path, schema: pa.Schema):
        self.directory, self.schema = directory, schema
        self.directory.mkdir(parents=True)
        self.writer, self.shard, self.in_shard, self.rows = None, 0, 0, 0
        self.labels, self.queries = Counter(), set()

    def write(self, table: pa.Table) -> None:
        if self.writer is None or self.in_shard >= SHARD_ROWS:
            self._roll()
        self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.in_shard += table.num_rows
        self.rows += table.num_rows
        self.labels.update(table.column("esci_label").to_pylist())
        self.queries.update(table.column("query_id").to_pylist())

    def _roll(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.shard += 1
        # Dictionaries and min/max statistics for the key and label columns only: on embeddings
        # (distinct floats) a dictionary is built, then abandoned, and a shard took 4x as long
        # to write and 3x as long to read as with plain pages.
        keys = [field.name for field in self.schema if not pa.types.is_fixed_size_list(field.type)]
        path = self.directory / f"part-{self.shard:05d}.parquet"
        self.writer = pq.ParquetWriter(path, self.schema, use_dictionary=keys, write_statistics=keys)
        self.in_shard = 0

    def close(self) -> dict:
        if self.writer is None:
            self._roll()  # an empty split still gets a (schema-only) shard
        self.writer.close()
        return {"rows": self.rows, "queries": len(self.queries), "labels": dict(sorted(self.labels.items()))}


def _schema(columns, dim: int) -> pa.Schema:
    fields = {
        "example_id": pa.int64(),
        "query_id": pa.string(),
        "product_id": pa.string(),
        "esci_label": pa.string(),
        features.LABEL: pa.int64(),
        "split": pa.string(),
        **{name: pa.list_(pa.float32(), dim) for name in columns},
    }
    return pa.schema(list(fields.items()))


def run(raw_dir: Path, data_digest: str = "", *, out_dir: Path, cfg: config.RunConfig, tags: dict) -> dict:
    """The stage: merge, then only what the DAG passes on (the full manifest is on disk).
    `data_digest`: the raw data's identity (lineage.data_digest), kept in the manifest for the
    MLflow datasets of the splits."""
    manifest = merge(raw_dir, out_dir, cfg, data_digest)
    return {
        "merged_dir": manifest["merged_dir"],
        "rows": manifest["rows"],
        "split_rows": {name: split["rows"] for name, split in manifest["splits"].items()},
    }


def merge(raw_dir: Path, out_dir: Path, cfg: config.RunConfig, data_digest: str = "") -> dict:
    """Hash join, streamed: judgements and query embeddings in memory (they are small), product
    embeddings read batch by batch, so memory does not grow with the product table."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    esci_path = raw_dir / paths.ESCI_FILE
    esci = raw.read_esci(esci_path)
    mask = raw.working_set(esci_path, esci, cfg)
    judgements = {
        "example_id": esci.column("example_id").to_numpy()[mask],
        "query_id": esci.column("query_id").to_numpy()[mask].astype(str),  # ESCI int -> SQID string
        "product_id": esci.column("product_id").to_numpy(zero_copy_only=False)[mask].astype(str),
        "esci_label": esci.column("esci_label").to_numpy(zero_copy_only=False)[mask].astype(str),
    }
    query_table = sqid.query_table(raw_dir)
    queries = sqid.scan_features(query_table, cfg.embedding_dim, keep=True, source=cfg.query_features_source)
    q_row = _lookup(queries.keys, judgements["query_id"])
    joined = q_row >= 0
    product_table = sqid.product_table(raw_dir)
    products = sqid.scan_features(product_table, cfg.embedding_dim) if cfg.feature_set == "query_product" else None
    raw.check_coverage(esci_path, esci, mask, queries.keys, products.keys if products else None, cfg)
    del esci
    if products is not None:
        p_row = _lookup(products.keys, judgements["product_id"])
        joined &= p_row >= 0
        p_file_row = np.where(p_row >= 0, products.rows[np.maximum(p_row, 0)], -1)
    columns = features.EMBEDDING_COLUMNS[cfg.feature_set]
    split_of = split_queries(judgements["query_id"][joined], cfg)
    split = np.array([split_of.get(q, "") for q in judgements["query_id"]])

    with atomic_dir(out_dir) as tmp:
        schema = _schema(columns, cfg.embedding_dim)
        writers = {name: _SplitWriter(tmp / name, schema) for name in paths.SPLITS}
        query_matrix = queries.embeddings["clip_text_features"]
        if cfg.feature_set == "query_product":
            rows = np.flatnonzero(joined)
            rows = rows[np.argsort(p_file_row[rows], kind="stable")]
            by_product = p_file_row[rows]
            for first, _, matrices in sqid.embedding_batches(product_table, cfg.embedding_dim):
                lo, hi = np.searchsorted(by_product, [first, first + len(matrices["clip_text_features"])])
                part = rows[lo:hi]
                local = by_product[lo:hi] - first
                embeddings = {features.QUERY_EMBEDDING: query_matrix[q_row[part]]}
                embeddings[features.PRODUCT_TEXT_EMBEDDING] = matrices["clip_text_features"][local]
                embeddings[features.PRODUCT_IMAGE_EMBEDDING] = matrices["clip_image_features"][local]
                _write_rows(writers, part, judgements, split, embeddings)
        else:
            rows = np.flatnonzero(joined)
            for start in range(0, len(rows), SHARD_ROWS):
                part = rows[start : start + SHARD_ROWS]
                _write_rows(writers, part, judgements, split, {features.QUERY_EMBEDDING: query_matrix[q_row[part]]})
        counts = {name: writer.close() for name, writer in writers.items()}
        _check_splits(counts, esci_path)
        manifest = {
            "merged_dir": str(out_dir),
            "feature_set": cfg.feature_set,
            "seed": cfg.seed,
            "embedding_dim": cfg.embedding_dim,
            "embedding_columns": list(columns),
            "working_set_judgements": int(mask.sum()),
            "dropped_without_features": int((~joined).sum()),
            "rows": sum(c["rows"] for c in counts.values()),
            "splits": counts,
            "data_digest": data_digest,
        }
        write_json(tmp / "manifest.json", manifest)
    log.info("merged %d judgements into %s: %s", manifest["rows"], out_dir, {k: v["rows"] for k, v in counts.items()})
    return manifest


def _write_rows(writers: dict, part: np.ndarray, judgements: dict, split: np.ndarray, embeddings: dict) -> None:
    """Write the judgements `part` (with their embeddings, row-aligned) to their splits' writers."""
    for name, writer in writers.items():
        chosen = np.flatnonzero(split[part] == name)
        if not chosen.size:
            continue
        rows = part[chosen]
        labels = judgements["esci_label"][rows]
        writer.write(
            pa.table(
                {
                    "example_id": pa.array(judgements["example_id"][rows], pa.int64()),
                    "query_id": pa.array(judgements["query_id"][rows], pa.string()),
                    "product_id": pa.array(judgements["product_id"][rows], pa.string()),
                    "esci_label": pa.array(labels, pa.string()),
                    features.LABEL: pa.array(
                        np.vectorize(features.LABEL_IDS.get, otypes=[np.int64])(labels), pa.int64()
                    ),
                    "split": pa.array(np.full(len(rows), name), pa.string()),
                    **{column: fixed_size_list(matrix[chosen]) for column, matrix in embeddings.items()},
                },
                schema=writer.schema,
            )
        )


def read_merged(merged_dir: Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """All shards of one split, as one table (for tests and small data; the stages stream)."""
    return pq.read_table(Path(merged_dir) / split, columns=columns)
