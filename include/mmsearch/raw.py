"""Reading the raw files, with the contract checks validate, merge and publish share: parquet read
in record batches (memory bounded by the batch), column types, embedding matrices, and the ESCI
judgements with their working set and join coverage. The SQID embedding files: `sqid`.

Every problem raises DataError naming the file, the column and a few offending rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmsearch import config, features
from mmsearch.io import DataError

BATCH_ROWS = 8192
# An embedding's norm this many times above or below the median of its batch is not CLIP's: a zero
# vector, a vector of 1e30s (whose cosines overflow). CLIP's norms vary by well under 2x.
NORM_FACTOR = 10.0


def _is_string(t):
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_float_list(t):
    listy = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    return listy and pa.types.is_floating(t.value_type)


TypeCheck = tuple[Callable[[pa.DataType], bool], str]
INTEGER: TypeCheck = (pa.types.is_integer, "an integer")
STRING: TypeCheck = (_is_string, "a string")
FLOAT_LIST: TypeCheck = (_is_float_list, "a list of floats")

ESCI_COLUMNS: dict[str, TypeCheck] = {
    "example_id": INTEGER,
    "query": STRING,
    "query_id": INTEGER,
    "product_id": STRING,
    "product_locale": STRING,
    "esci_label": STRING,
    "small_version": INTEGER,
    "large_version": INTEGER,
    "split": STRING,
}
ESCI_LABELS = frozenset(features.LABEL_IDS)
ESCI_SPLITS = frozenset({"train", "test"})


def parquet_file(path) -> pq.ParquetFile:
    """A parquet reader that streams: no pre-buffering of whole row groups (measured on 164,900
    products x 2 x 768 floats: 1.45 GB peak with Arrow's defaults, 0.48 GB like this, and faster)."""
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)


def open_parquet(path: Path) -> pq.ParquetFile:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file is missing")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    try:
        parquet = parquet_file(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(path, f"not a readable parquet file (truncated or another format): {exc}") from None
    if parquet.metadata.num_rows == 0:
        raise DataError(path, "has no rows")
    return parquet


def check_schema(path: Path, schema: pa.Schema, required: dict[str, TypeCheck]) -> None:
    for name, (is_ok, wanted) in required.items():
        if name not in schema.names:
            raise DataError(path, f"required column is missing (columns: {', '.join(schema.names)})", column=name)
        if not is_ok(schema.field(name).type):
            raise DataError(path, f"must be {wanted}, found {schema.field(name).type}", column=name)


def iter_batches(parquet: pq.ParquetFile, columns: list[str], path: Path) -> Iterator[pa.RecordBatch]:
    try:
        yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(path, f"cannot be read to the end (truncated or corrupt): {exc}") from None


def embedding_matrix(column: pa.Array, dim: int, path: Path, name: str, row_name: Callable) -> np.ndarray:
    """Check one batch of an embedding column (length, finiteness) and return it as float32 [n, dim]."""
    if column.null_count:
        nulls = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
        raise DataError(path, "has null embeddings", column=name, rows=map(row_name, nulls))
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != dim)
    if wrong.size:
        found = sorted(set(lengths[wrong].tolist()))
        raise DataError(
            path, f"embeddings must have {dim} values, found {found}", column=name, rows=map(row_name, wrong)
        )
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    matrix = values.reshape(len(column), dim)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:  # a value beyond float32's range is infinite here
        raise DataError(path, "has NaN or infinite values", column=name, rows=map(row_name, bad))
    check_norms(matrix, path, name, row_name)
    return matrix


def check_norms(matrix: np.ndarray, path: Path, name: str, row_name: Callable) -> None:
    """Refuse vectors no CLIP model makes: a norm of zero, or NORM_FACTOR times off the batch's median."""
    with np.errstate(over="ignore"):  # a vector of 1e30s: its norm overflows to inf, and is refused
        norms = np.linalg.norm(matrix, axis=1)
    median = float(np.median(norms))
    far = (norms <= 0) | (norms < median / NORM_FACTOR) | (norms > median * NORM_FACTOR)
    if far.any():
        rows = [f"{row_name(i)}: norm {norms[i]:.3g}" for i in np.flatnonzero(far)]
        problem = f"embeddings must have a norm within {NORM_FACTOR:g}x of the data's median ({median:.3g})"
        raise DataError(path, problem, column=name, rows=rows)


def read_esci(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The ESCI judgements, checked against the contract (labels, splits, types)."""
    parquet = open_parquet(path)
    check_schema(path, parquet.schema_arrow, ESCI_COLUMNS)
    table = pa.Table.from_batches(list(iter_batches(parquet, list(ESCI_COLUMNS), path)))
    _check_values(path, table, "esci_label", ESCI_LABELS)
    _check_values(path, table, "split", ESCI_SPLITS)
    _check_unique_examples(path, table)
    return table.select(columns) if columns else table


def _check_unique_examples(path: Path, table: pa.Table) -> None:
    ids = table.column("example_id").to_numpy()
    values, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        rows = [
            f"example_id {values[group]} (rows {', '.join(map(str, np.flatnonzero(inverse == group)[:3]))})"
            for group in np.flatnonzero(counts > 1)
        ]
        raise DataError(path, f"{len(rows)} example_ids repeat", column="example_id", rows=rows)


def _check_values(path, table, column, allowed) -> None:
    values = table.column(column)
    bad = pc.invert(pc.fill_null(pc.is_in(values, value_set=pa.array(sorted(allowed))), False))
    rows = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
    if rows.size:
        found = sorted({str(v) for v in pc.unique(pc.filter(values, bad)).to_pylist()})[:5]
        raise DataError(
            path,
            f"values must be one of {sorted(allowed)}, found {found}",
            column=column,
            rows=[f"row {r} (example_id {table.column('example_id')[int(r)]})" for r in rows],
        )


def working_set_mask(table: pa.Table, cfg: config.RunConfig) -> np.ndarray:
    """The ESCI rows SQID covers: us locale, small version, test split (configurable)."""
    mask = np.ones(table.num_rows, dtype=bool)
    if cfg.esci_filter_locale:
        mask &= table.column("product_locale").to_numpy(zero_copy_only=False) == cfg.esci_filter_locale
    if cfg.esci_filter_small_version:
        mask &= table.column("small_version").to_numpy() == 1
    if cfg.esci_filter_split:
        mask &= table.column("split").to_numpy(zero_copy_only=False) == cfg.esci_filter_split
    return mask


def working_set(esci_path: Path, table: pa.Table, cfg: config.RunConfig) -> np.ndarray:
    """The working-set mask; DataError when no row is in it."""
    mask = working_set_mask(table, cfg)
    if not mask.any():
        raise DataError(
            esci_path,
            f"no rows in the working set (locale={cfg.esci_filter_locale!r}, "
            f"small_version={cfg.esci_filter_small_version}, split={cfg.esci_filter_split!r})",
        )
    _check_pairs_judged_once(esci_path, table.filter(pa.array(mask)))
    return mask


def _check_pairs_judged_once(esci_path: Path, working: pa.Table) -> None:
    """A query-product pair of the working set is judged once: twice would count one judgement
    twice, or leave two labels for one pair."""
    judged = working.group_by(["query_id", "product_id"], use_threads=False).aggregate(
        [("example_id", "list"), ("esci_label", "list")]
    )
    repeated = judged.filter(pc.greater(pc.list_value_length(judged["example_id_list"]), 1)).to_pylist()
    if repeated:
        rows = [
            f"query_id {pair['query_id']}, product_id '{pair['product_id']}': labels "
            f"{'/'.join(pair['esci_label_list'])} (example_id {', '.join(map(str, pair['example_id_list']))})"
            for pair in repeated
        ]
        problem = f"{len(rows)} query-product pairs of the working set are judged more than once"
        raise DataError(esci_path, problem, column="product_id", rows=rows)


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


def check_coverage(esci_path: Path, esci, mask, query_keys, product_keys, cfg: config.RunConfig) -> dict:
    """The coverage report; DataError when coverage is below `min_join_coverage` (validate and
    merge both refuse such data: merged alone, it would train on the judgements that joined)."""
    coverage = coverage_report(esci, mask, query_keys, product_keys)
    if coverage["coverage"] < cfg.min_join_coverage:
        raise DataError(
            esci_path,
            f"join coverage {coverage['coverage']:.3f} is below min_join_coverage {cfg.min_join_coverage}: "
            f"{coverage['missing_query_features']} of {coverage['working_set_judgements']} working-set judgements "
            f"lack query features, {coverage['missing_product_features']} lack product features",
            column="query_id/product_id",
            rows=[f"example_id {e}" for e in coverage["example_ids_missing_features"]],
        )
    return coverage
