"""Generate ESCI and SQID files with the real names and schemas, and a learnable structure.

The structure, so that relevance depends on the query-product *pair*:

* There are ``topics`` product topics, each with ``intents`` sub-topics (intents).
  Topics come in complementary pairs (0-1, 2-3, ...): a phone and its case.
* Every query and every product has one (topic, intent). Its CLIP-like embedding is
  ``normalize(topic_center + 0.8 * intent_vector + noise)``; topic centres of a
  complementary pair share a component. Product image embeddings add a fixed modality
  offset and more noise than the text ones, as CLIP image vectors do.
* Each query gets a handful of judged products. Its label is drawn with frequencies
  near ESCI's (E 65 %, S 22 %, I 10 %, C 3 %) and the product is then drawn to fit it:
  E same topic and intent, S same topic other intent, C the complementary topic,
  I any unrelated topic. Every query so carries several labels, and only the pair
  tells them apart: a query-only model can do no better than the majority label.
* ``label_noise`` of the judgements get a different label at random, as human
  judgements do.

Besides the working set (locale ``us``, ``small_version`` 1, split ``test``, the rows
SQID has embeddings for), ESCI gets rows outside it (other locales, the train split,
large-version only) with no SQID features, as in the public files.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmsearch import config as C
from mmsearch.io import atomic_dir

LABEL_FREQUENCIES = {"E": 0.65, "S": 0.22, "I": 0.10, "C": 0.03}
TOPIC_WORDS = [
    "phone", "laptop", "shoe", "sock", "lamp", "bulb", "camera", "tripod", "guitar",
    "strings", "printer", "ink", "coffee", "filter", "bike", "helmet", "tent", "sleeping bag",
    "razor", "blade", "drill", "drill bit", "dog leash", "dog collar", "pen", "notebook",
]
INTENT_WORDS = ["cheap", "waterproof", "kids", "pro", "wireless", "large", "black", "vintage"]


@dataclass(frozen=True)
class SampleSpec:
    queries: int = 300
    products: int = 1600
    mean_judgements: float = 20.0
    topics: int = 24
    intents: int = 4
    label_noise: float = 0.08
    outside_fraction: float = 0.2
    dim: int = C.EMBEDDING_DIM
    seed: int = 7


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


class _Space:
    """The shared embedding geometry: topic centres, intent vectors, modality offset."""

    def __init__(self, spec: SampleSpec, rng: np.random.Generator):
        base = _unit(rng.standard_normal((spec.topics, spec.dim)))
        partner = base[np.arange(spec.topics) ^ 1]
        self.centres = _unit(base + 0.35 * partner)
        self.intent_vectors = _unit(rng.standard_normal((spec.topics, spec.intents, spec.dim)))
        self.image_offset = _unit(rng.standard_normal(spec.dim))
        self.dim = spec.dim

    def embed(self, topic, intent, rng, noise: float, offset: float = 0.0) -> np.ndarray:
        mean = self.centres[topic] + 0.8 * self.intent_vectors[topic, intent]
        noisy = mean + noise * _unit(rng.standard_normal((len(topic), self.dim)))
        return _unit(noisy + offset * self.image_offset).astype(np.float32)


def embedding_array(vectors: np.ndarray) -> pa.Array:
    """A list<float32> column, as the public SQID files store embeddings."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _draw_products(spec, space, rng):
    topic = rng.integers(0, spec.topics, spec.products)
    intent = rng.integers(0, spec.intents, spec.products)
    # every (topic, intent) cell gets at least one product, so every label is drawable
    cells = spec.topics * spec.intents
    if spec.products >= cells:
        topic[:cells] = np.arange(cells) // spec.intents
        intent[:cells] = np.arange(cells) % spec.intents
    text = space.embed(topic, intent, rng, noise=0.6)
    image = space.embed(topic, intent, rng, noise=0.9, offset=0.5)
    ids = np.array([f"B0{n:08X}" for n in range(spec.products)])
    return ids, topic, intent, text, image


def _candidates(label, q_topic, q_intent, p_topic, p_intent):
    if label == "E":
        return np.flatnonzero((p_topic == q_topic) & (p_intent == q_intent))
    if label == "S":
        return np.flatnonzero((p_topic == q_topic) & (p_intent != q_intent))
    if label == "C":
        return np.flatnonzero(p_topic == (q_topic ^ 1))
    return np.flatnonzero((p_topic != q_topic) & (p_topic != (q_topic ^ 1)))


def _draw_judgements(spec, rng, q_topic, q_intent, p_topic, p_intent):
    labels, freqs = list(LABEL_FREQUENCIES), np.array(list(LABEL_FREQUENCIES.values()))
    rows = []  # (query index, product index, label)
    for q in range(spec.queries):
        count = max(2, rng.poisson(spec.mean_judgements))
        drawn = rng.choice(labels, size=count, p=freqs / freqs.sum())
        seen = set()
        for label in drawn:
            pool = _candidates(label, q_topic[q], q_intent[q], p_topic, p_intent)
            pool = [p for p in pool if p not in seen]
            if not pool:
                continue
            product = int(rng.choice(pool))
            seen.add(product)
            if rng.random() < spec.label_noise:
                label = rng.choice([other for other in labels if other != label])
            rows.append((q, product, str(label)))
    return rows


def _query_text(topic: int, intent: int, serial: int) -> str:
    return f"{INTENT_WORDS[intent % len(INTENT_WORDS)]} {TOPIC_WORDS[topic % len(TOPIC_WORDS)]} {serial}"


def _esci_table(spec, rng, judgements, q_ids, q_topic, q_intent, product_ids) -> pa.Table:
    n_in = len(judgements)
    n_out = int(round(n_in * spec.outside_fraction / (1 - spec.outside_fraction)))
    q_index = np.array([j[0] for j in judgements] + list(rng.integers(0, spec.queries, n_out)))
    # rows outside the working set use other query ids, as other locales/splits do
    query_id = np.where(np.arange(n_in + n_out) < n_in, q_ids[q_index], q_ids[q_index] + 1_000_000)
    outside_kind = rng.integers(0, 3, n_out)
    locale = ["us"] * n_in + [["es", "us", "jp"][k] for k in outside_kind]
    split = ["test"] * n_in + [["test", "train", "test"][k] for k in outside_kind]
    small = [1] * n_in + [[1, 1, 0][k] for k in outside_kind]
    products = [product_ids[j[1]] for j in judgements] + list(rng.choice(product_ids, n_out))
    labels = [j[2] for j in judgements] + list(rng.choice(list(LABEL_FREQUENCIES), n_out))
    order = rng.permutation(n_in + n_out)
    take = lambda values: [values[i] for i in order]  # noqa: E731
    return pa.table(
        {
            "example_id": pa.array(np.arange(n_in + n_out, dtype=np.int64)),
            "query": pa.array(
                take([_query_text(q_topic[q], q_intent[q], int(qid)) for q, qid in zip(q_index, query_id)])
            ),
            "query_id": pa.array(query_id[order].astype(np.int64)),
            "product_id": pa.array(take(products)),
            "product_locale": pa.array(take(locale)),
            "esci_label": pa.array(take(labels)),
            "small_version": pa.array(np.array(take(small), dtype=np.int64)),
            "large_version": pa.array(np.ones(n_in + n_out, dtype=np.int64)),
            "split": pa.array(take(split)),
        }
    )


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
    space = _Space(spec, rng)
    q_topic = rng.integers(0, spec.topics, spec.queries)
    q_intent = rng.integers(0, spec.intents, spec.queries)
    q_vectors = space.embed(q_topic, q_intent, rng, noise=0.6)
    q_ids = rng.choice(np.arange(1, 10 * spec.queries + 1), spec.queries, replace=False).astype(np.int64)
    product_ids, p_topic, p_intent, p_text, p_image = _draw_products(spec, space, rng)
    judgements = _draw_judgements(spec, rng, q_topic, q_intent, p_topic, p_intent)
    esci = _esci_table(spec, rng, judgements, q_ids, q_topic, q_intent, product_ids)

    with atomic_dir(Path(out_dir)) as tmp:
        (tmp / "sqid").mkdir()
        pq.write_table(esci, tmp / C.ESCI_FILE)
        queries = pa.table({"query_id": pa.array([str(q) for q in q_ids]), "clip_text_features": embedding_array(q_vectors)})
        pq.write_table(queries, tmp / C.QUERY_FEATURES_FILE)
        products = pa.table(
            {
                "product_id": pa.array(product_ids),
                "clip_text_features": embedding_array(p_text),
                "clip_image_features": embedding_array(p_image),
            }
        )
        pq.write_table(products, tmp / C.PRODUCT_FEATURES_FILE)
        if legacy_csv:
            write_legacy_query_csv(tmp / C.LEGACY_QUERY_CSV, q_ids, q_vectors, spec.seed)
    labels = esci.column("esci_label").to_pylist()
    return {
        "out_dir": str(out_dir),
        "judgements": esci.num_rows,
        "working_set_judgements": len(judgements),
        "queries": spec.queries,
        "products": spec.products,
        "label_counts": {label: labels.count(label) for label in LABEL_FREQUENCIES},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SampleSpec()
    parser.add_argument("--out", type=Path, required=True, help="raw data directory to write")
    for name in ("queries", "products", "topics", "intents", "dim", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("mean_judgements", "label_noise", "outside_fraction"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=getattr(defaults, name))
    parser.add_argument("--legacy-csv", action="store_true", help=f"also write {C.LEGACY_QUERY_CSV}")


def run_from_args(args: argparse.Namespace) -> dict:
    fields = SampleSpec.__dataclass_fields__
    spec = SampleSpec(**{name: getattr(args, name) for name in fields})
    return generate(args.out, spec, legacy_csv=args.legacy_csv)
