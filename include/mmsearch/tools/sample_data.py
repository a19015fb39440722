"""Generate ESCI and SQID files with the real names and schemas, and the structure of search data.

Hundreds of product types of uneven popularity, in sibling pairs; products with several attribute
values, queries naming some; Exact, Substitute, Complement (a one-way
accessory graph) and Irrelevant (half lexical hard negatives) relations; CLIP-like geometry (a
common direction, brands as nuisance); labels drawn from a known p(label | pair), written beside
the raw files (`generator_truth.parquet`) so the best possible scores are known (`ceiling`);
ESCI rows outside the working set as in the public files. Deterministic for a seed.
docs/sample-data.md explains each piece and why.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmsearch import paths
from mmsearch.io import atomic_dir
from mmsearch.sqid import PRODUCT_EMBEDDINGS, embedding_array
from mmsearch.tools.sample_world import (
    ATTRIBUTE_WORDS,
    LABEL_FREQUENCIES,
    Catalogue,
    SampleSpec,
    Space,
    accessory_graph,
    draw_catalogue,
    draw_judgements,
    draw_queries,
    popularity,
    product_id,
    type_names,
)

PRODUCT_CHUNK = 8_192
# Seeds of the random streams beside the main one: products draw from [seed, chunk number].
SPACE_STREAM, QUERY_STREAM = 10_000, 10_001
# The generator's own knowledge, beside the raw files: the pipeline never reads it.
TRUTH_FILE = "generator_truth.parquet"


def query_texts(spec: SampleSpec, queries: dict) -> np.ndarray:
    """What each query says: the attribute values it names, then its type ("black kids bike")."""
    names = type_names(spec.topics)
    texts = []
    for topic, values in zip(queries["type"], queries["values"]):
        words = [ATTRIBUTE_WORDS[a][v] for a, v in enumerate(values) if v >= 0]
        texts.append(" ".join([*words, names[topic]]))
    return np.array(texts)


def _esci_table(spec, rng, judgements, q_ids, q_texts) -> tuple[pa.Table, pa.Table]:
    """The ESCI examples, and the true p(label | pair) of each working-set example (by example_id)."""
    query, product, label, truth = judgements
    n_in = len(query)
    n_out = int(round(n_in * spec.outside_fraction / (1 - spec.outside_fraction)))
    # rows outside the working set: other locales, the train split, large-version only; no SQID features
    kind = rng.integers(0, 3, n_out)
    q_all = np.concatenate([query, rng.integers(0, spec.queries, n_out)])
    query_id = q_ids[q_all] + np.where(np.arange(n_in + n_out) < n_in, 0, 1_000_000)
    order = rng.permutation(n_in + n_out)
    text = np.char.add(q_texts[q_all], " ")
    columns = {
        "example_id": np.arange(n_in + n_out, dtype=np.int64),
        "query": np.char.add(text, query_id.astype(str))[order],
        "query_id": query_id[order].astype(np.int64),
        "product_id": product_id(np.concatenate([product, rng.integers(0, spec.products, n_out)]))[order],
        "product_locale": np.concatenate([np.full(n_in, "us"), np.array(["es", "us", "jp"])[kind]])[order],
        "esci_label": np.concatenate([label, rng.choice(list(LABEL_FREQUENCIES), n_out)])[order],
        "small_version": np.concatenate([np.ones(n_in, np.int64), np.array([1, 1, 0])[kind]])[order],
        "large_version": np.ones(n_in + n_out, dtype=np.int64),
        "split": np.concatenate([np.full(n_in, "test"), np.array(["test", "train", "test"])[kind]])[order],
    }
    working = np.flatnonzero(order < n_in)  # example_id e is original row order[e]
    probabilities = {f"p_{name}": pa.array(truth[order[working], i]) for i, name in enumerate(LABEL_FREQUENCIES)}
    truth_table = pa.table({"example_id": pa.array(working, pa.int64()), **probabilities})
    return pa.table({name: pa.array(values) for name, values in columns.items()}), truth_table


def _write_products(path: Path, spec, space: Space, catalogue: Catalogue) -> None:
    """Product embeddings in chunks, each from its own seeded stream: memory bounded by the chunk."""
    schema = pa.schema([("product_id", pa.string()), *((name, pa.list_(pa.float32())) for name in PRODUCT_EMBEDDINGS)])
    title_type, title_word = catalogue.title_type(), catalogue.title_word()
    with pq.ParquetWriter(path, schema) as writer:
        for chunk, start in enumerate(range(0, spec.products, PRODUCT_CHUNK)):
            rows = np.arange(start, min(start + PRODUCT_CHUNK, spec.products))
            rng = np.random.default_rng([spec.seed, chunk])
            parts = {"type": catalogue.topic[rows], "values": catalogue.values[rows], "brand": catalogue.brand[rows]}
            text = {**parts, "type": title_type[rows], "word": title_type[rows], "extra_word": title_word[rows]}
            columns = {"product_id": pa.array(product_id(rows))}
            columns["clip_text_features"] = embedding_array(space.embed(text, rng, noise=0.55))
            columns["clip_image_features"] = embedding_array(space.embed(parts, rng, noise=0.8, image=True))
            writer.write_table(pa.table(columns, schema=schema))


def write_legacy_query_csv(path: Path, query_ids, vectors: np.ndarray, seed: int) -> None:
    """The older export: query_id, f0..f{dim-1}, event_timestamp."""
    import pandas as pd

    frame = pd.DataFrame(vectors, columns=[f"f{i}" for i in range(vectors.shape[1])])
    frame.insert(0, "query_id", np.asarray(query_ids, dtype=np.int64))
    start = pd.Timestamp("2022-06-01", tz="UTC")
    offsets = np.random.default_rng(seed).integers(0, 86_400 * 30, len(frame))
    frame["event_timestamp"] = start + pd.to_timedelta(offsets, unit="s")
    frame.to_csv(path, index=False)


def generate(out_dir: Path, spec: SampleSpec = SampleSpec(), legacy_csv: bool = False) -> dict:
    """Write the three raw files (and optionally the legacy CSV) into `out_dir`, atomically."""
    rng = np.random.default_rng(spec.seed)
    # the geometry draws from streams of its own: the same world at any embedding width
    space = Space(spec, np.random.default_rng([spec.seed, SPACE_STREAM]))
    accessory = accessory_graph(spec.topics, rng)
    shares = popularity(spec, rng)
    queries = draw_queries(spec, rng, shares)
    q_vectors = space.embed(queries, np.random.default_rng([spec.seed, QUERY_STREAM]), noise=0.55)
    q_ids = rng.choice(np.arange(1, 10 * spec.queries + 1), spec.queries, replace=False).astype(np.int64)
    catalogue = draw_catalogue(spec, rng, accessory, shares)
    judgements = draw_judgements(spec, rng, queries, catalogue)
    esci, truth = _esci_table(spec, rng, judgements, q_ids, query_texts(spec, queries))

    with atomic_dir(Path(out_dir)) as tmp:
        (tmp / "sqid").mkdir()
        pq.write_table(esci, tmp / paths.ESCI_FILE)
        pq.write_table(truth, tmp / TRUTH_FILE)
        queries = pa.table({"query_id": pa.array(q_ids.astype(str)), "clip_text_features": embedding_array(q_vectors)})
        pq.write_table(queries, tmp / paths.QUERY_FEATURES_FILE)
        _write_products(tmp / paths.PRODUCT_FEATURES_FILE, spec, space, catalogue)
        if legacy_csv:
            write_legacy_query_csv(tmp / paths.LEGACY_QUERY_CSV, q_ids, q_vectors, spec.seed)
    working_labels, counts = np.unique(judgements[2], return_counts=True)
    return {
        "out_dir": str(out_dir),
        "judgements": esci.num_rows,
        "working_set_judgements": len(judgements[0]),
        "queries": spec.queries,
        "products": spec.products,
        "working_set_label_counts": dict(zip(working_labels.tolist(), counts.tolist())),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SampleSpec()
    parser.add_argument("--out", type=Path, required=True, help="raw data directory to write")
    for name in ("queries", "products", "topics", "attributes", "values", "brands", "dim", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("mean_judgements", "popularity", "label_noise", "outside_fraction"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=getattr(defaults, name))
    parser.add_argument("--legacy-csv", action="store_true", help=f"also write {paths.LEGACY_QUERY_CSV}")


def run_from_args(args: argparse.Namespace) -> dict:
    fields = SampleSpec.__dataclass_fields__
    spec = SampleSpec(**{name: getattr(args, name) for name in fields})
    return generate(args.out, spec, legacy_csv=args.legacy_csv)
