"""The SQID embedding files (query features, product features, or the older query CSV export):
read in record batches, every batch checked (keys, widths, finite values), duplicate keys
collapsed when their embeddings agree and refused when they differ."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmsearch import features, paths
from mmsearch.io import DataError
from mmsearch.raw import (
    BATCH_ROWS,
    FLOAT_LIST,
    STRING,
    TypeCheck,
    check_schema,
    embedding_matrix,
    iter_batches,
    open_parquet,
)

QUERY_FEATURE_COLUMNS: dict[str, TypeCheck] = {"query_id": STRING, "clip_text_features": FLOAT_LIST}
PRODUCT_EMBEDDINGS = ("clip_text_features", "clip_image_features")
PRODUCT_FEATURE_COLUMNS: dict[str, TypeCheck] = {"product_id": STRING, **dict.fromkeys(PRODUCT_EMBEDDINGS, FLOAT_LIST)}


@dataclass(frozen=True)
class FeatureTable:
    """One SQID feature table: its file, key column and embedding columns."""

    path: Path
    key: str
    embeddings: tuple[str, ...]
    columns: dict[str, TypeCheck]


def query_table(raw_dir: Path) -> FeatureTable:
    path = Path(raw_dir) / paths.QUERY_FEATURES_FILE
    return FeatureTable(path, "query_id", ("clip_text_features",), QUERY_FEATURE_COLUMNS)


def product_table(raw_dir: Path) -> FeatureTable:
    path = Path(raw_dir) / paths.PRODUCT_FEATURES_FILE
    return FeatureTable(path, "product_id", PRODUCT_EMBEDDINGS, PRODUCT_FEATURE_COLUMNS)


@dataclass
class Features:
    """Keys and (when kept) embeddings of one feature table, duplicates collapsed.

    `rows` are the file's row numbers of the kept keys, for a second, streaming pass."""

    keys: np.ndarray
    rows: np.ndarray
    embeddings: dict[str, np.ndarray]
    identical_duplicates: int


def read_legacy_query_csv(path: Path, dim: int) -> pa.Table:
    """The older export (query_id, f0..f{dim-1}, event_timestamp) as an SQID query table."""
    import pyarrow.csv as pacsv

    path = Path(path)
    if not path.exists():
        raise DataError(path, "file is missing")
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={"query_id": pa.string()}))
    except pa.ArrowInvalid as exc:
        raise DataError(path, f"not a readable CSV file: {exc}") from None
    expected = [f"f{i}" for i in range(dim)]
    found = [name for name in table.column_names if name.startswith("f") and name[1:].isdigit()]
    for name in ("query_id", "event_timestamp"):
        if name not in table.column_names:
            raise DataError(path, "required column is missing", column=name)
    for wrong, names in (("missing", set(expected) - set(found)), ("extra", set(found) - set(expected))):
        if names:
            names = sorted(names, key=lambda n: int(n[1:]))
            problem = f"feature columns f0..f{dim - 1} expected, {len(names)} {wrong}"
            raise DataError(path, problem, column=names[0], rows=names)
    if table.num_rows == 0:
        raise DataError(path, "has no rows")
    for name in expected:
        kind = table.schema.field(name).type
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            raise DataError(path, f"must be numeric, found {kind}", column=name)
    matrix = np.column_stack([table.column(n).to_numpy().astype(np.float32) for n in expected])
    return pa.table({"query_id": table.column("query_id"), "clip_text_features": embedding_array(matrix)})


def embedding_array(vectors: np.ndarray) -> pa.Array:
    """A list<float32> column, as the public SQID files store embeddings."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def feature_batches(
    ft: FeatureTable, source: str = "sqid", dim: int = features.EMBEDDING_DIM
) -> Iterator[pa.RecordBatch]:
    if source == "legacy_csv" and ft.key == "query_id":
        yield from read_legacy_query_csv(ft.path.parent.parent / paths.LEGACY_QUERY_CSV, dim).to_batches(BATCH_ROWS)
        return
    parquet = open_parquet(ft.path)
    check_schema(ft.path, parquet.schema_arrow, ft.columns)
    yield from iter_batches(parquet, [ft.key, *ft.embeddings], ft.path)


def source_path(ft: FeatureTable, source: str) -> Path:
    if source == "legacy_csv" and ft.key == "query_id":
        return ft.path.parent.parent / paths.LEGACY_QUERY_CSV
    return ft.path


def embedding_batches(ft: FeatureTable, dim: int, source: str = "sqid") -> Iterator[tuple[int, pa.Array, dict]]:
    """(first row number, keys, {column: checked float32 matrix}) per record batch: the one
    streaming read of a feature table, for the checks and for merge's second pass."""
    path, offset = source_path(ft, source), 0
    for batch in feature_batches(ft, source, dim):
        ids = batch.column(ft.key)
        if ids.null_count:
            rows = np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False)) + offset
            raise DataError(path, "has null keys", column=ft.key, rows=[f"row {r}" for r in rows])

        def row_name(i: int, ids=ids, offset=offset) -> str:  # named only when an error needs it
            return f"{ft.key} '{ids[int(i)]}' (row {offset + int(i)})"

        matrices = {name: embedding_matrix(batch.column(name), dim, path, name, row_name) for name in ft.embeddings}
        yield offset, ids, matrices
        offset += batch.num_rows


def scan_features(ft: FeatureTable, dim: int, keep: bool = False, source: str = "sqid") -> Features:
    """Check every batch of a feature table; return its keys, and its embeddings if `keep`.

    Duplicate keys with identical embeddings are collapsed (first kept); duplicate keys
    with different embeddings are an error, since the join would be ambiguous.
    """
    projection = np.random.default_rng(0).standard_normal((dim, 2)).astype(np.float32)
    keys, prints, kept = [], [], {name: [] for name in ft.embeddings}
    for _, ids, matrices in embedding_batches(ft, dim, source):
        keys.append(ids.to_numpy(zero_copy_only=False).astype(str))
        prints.append(np.hstack([matrices[name] @ projection for name in ft.embeddings]))
        if keep:
            for name, matrix in matrices.items():
                kept[name].append(matrix)
    keys_all = np.concatenate(keys)
    first, collapsed = _first_of_duplicates(source_path(ft, source), ft.key, keys_all, np.vstack(prints))
    embeddings = {name: np.vstack(parts)[first] for name, parts in kept.items()} if keep else {}
    return Features(keys_all[first], first, embeddings, collapsed)


def _first_of_duplicates(path, key, keys, prints) -> tuple[np.ndarray, int]:
    """Indices of the first row of each key; error if a duplicated key's embeddings differ."""
    uniq, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    if (counts == 1).all():
        return np.arange(len(keys)), 0
    conflicting = []
    for group in np.flatnonzero(counts > 1):
        rows = np.flatnonzero(inverse == group)
        if not np.allclose(prints[rows], prints[rows[0]], rtol=0, atol=1e-6):
            conflicting.append(f"{key} '{uniq[group]}' (rows {', '.join(map(str, rows[:3]))})")
    if conflicting:
        problem = f"{len(conflicting)} duplicate keys with different embeddings"
        raise DataError(path, problem, column=key, rows=conflicting)
    return np.sort(first), int(len(keys) - len(uniq))
