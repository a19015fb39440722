"""Generate ESCI and SQID files with the real names and schemas, and a learnable structure.

The structure, so that relevance depends on the query-product *pair*:

* There are ``topics`` product topics, each with ``intents`` sub-topics (intents).
  Topics come in complementary pairs (0-1, 2-3, ...): a phone and its case.
* Every query and every product has one (topic, intent). Its CLIP-like embedding is
  ``normalize(topic_center + 0.8 * intent_vector + noise)``; topic centres of a
  complementary pair share a component. Product image embeddings add a fixed modality
  offset and more noise than the text ones, as CLIP image vectors do.
* Each query gets a handful of judged products. Their relation is drawn with frequencies
  near ESCI's (E 65 %, S 22 %, I 10 %, C 3 %) and the product is then drawn to fit it:
  E same topic and intent, S same topic other intent, C the complementary topic,
  I any unrelated topic. Every query so carries several labels, and only the pair
  tells them apart: a query-only model can do no better than the majority label.
* The judge's label is drawn from a known p(label | pair): the relation with probability
  ``1 - label_noise``, else a nearby label (an exact match called a substitute, a
  complement called irrelevant; `STRAY`), as ESCI's judges disagree. That distribution is
  written beside the raw files (`generator_truth.parquet`, by example_id), so the best
  possible scores on any split are known (`ceiling`): the honest yardstick of a model.

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
from mmsearch import features as F
from mmsearch.io import atomic_dir
from mmsearch.raw import embedding_array

LABEL_FREQUENCIES = {"E": 0.65, "S": 0.22, "I": 0.10, "C": 0.03}
TOPIC_WORDS = [
    "phone",
    "laptop",
    "shoe",
    "sock",
    "lamp",
    "bulb",
    "camera",
    "tripod",
    "guitar",
    "strings",
    "printer",
    "ink",
    "coffee",
    "filter",
    "bike",
    "helmet",
    "tent",
    "sleeping bag",
    "razor",
    "blade",
    "drill",
    "drill bit",
    "dog leash",
    "dog collar",
    "pen",
    "notebook",
]
PRODUCT_CHUNK = 8_192
# The generator's own knowledge, beside the raw files: the pipeline never reads it.
TRUTH_FILE = "generator_truth.parquet"
INTENT_WORDS = ["cheap", "waterproof", "kids", "pro", "wireless", "large", "black", "vintage"]


@dataclass(frozen=True)
class SampleSpec:
    queries: int = 300
    products: int = 1600
    mean_judgements: float = 24.0
    topics: int = 24
    intents: int = 4
    label_noise: float = 0.2
    outside_fraction: float = 0.2
    dim: int = F.EMBEDDING_DIM
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


def _product_cells(spec, rng):
    """Each product's (topic, intent); the first products cover every cell, so every label is drawable."""
    topic = rng.integers(0, spec.topics, spec.products)
    intent = rng.integers(0, spec.intents, spec.products)
    cells = spec.topics * spec.intents
    if spec.products >= cells:
        topic[:cells] = np.arange(cells) // spec.intents
        intent[:cells] = np.arange(cells) % spec.intents
    return topic, intent


def product_id(index: np.ndarray) -> np.ndarray:
    return np.char.add("B0", np.char.zfill(np.char.upper(np.vectorize(lambda n: format(n, "X"))(index)), 8))


def _draw_judgements(spec, rng, q_topic, q_intent, p_topic, p_intent):
    """(query index, product index, label) arrays, vectorised: the label first, then a product
    drawn from the (topic, intent) cell that the label calls for."""
    labels = np.array(list(LABEL_FREQUENCIES))
    freqs = relation_frequencies(spec.label_noise)
    per_query = np.maximum(2, rng.poisson(spec.mean_judgements, spec.queries))
    query = np.repeat(np.arange(spec.queries), per_query)
    label = rng.choice(labels, size=len(query), p=freqs)
    topic, intent = q_topic[query].copy(), q_intent[query].copy()
    substitute, complement, irrelevant = label == "S", label == "C", label == "I"
    intent[substitute] = (intent[substitute] + rng.integers(1, spec.intents, substitute.sum())) % spec.intents
    topic[complement] = topic[complement] ^ 1
    # an unrelated topic: any but the query's own pair of complementary topics
    other = rng.integers(0, spec.topics - 2, irrelevant.sum())
    pair = topic[irrelevant] & ~1
    topic[irrelevant] = other + 2 * (other >= pair)
    redraw = complement | irrelevant
    intent[redraw] = rng.integers(0, spec.intents, redraw.sum())

    cell = p_topic * spec.intents + p_intent
    by_cell = np.argsort(cell, kind="stable")
    counts = np.bincount(cell, minlength=spec.topics * spec.intents)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    wanted = topic * spec.intents + intent
    product = by_cell[starts[wanted] + (rng.random(len(query)) * counts[wanted]).astype(np.int64)]

    first = np.unique(query * spec.products + product, return_index=True)[1]  # one judgement per pair
    keep = np.sort(first)
    query, product, relation = query[keep], product[keep], label[keep]
    truth = label_probabilities(relation, spec.label_noise)
    drawn = (rng.random(len(relation))[:, None] > np.cumsum(truth, axis=1)).sum(axis=1)
    return query, product, labels[np.minimum(drawn, len(labels) - 1)], truth


# Where a judge's label strays from the pair's relation, it strays as people do: an exact match
# called a substitute, a complement called irrelevant. Rows: relation; columns: label (E, S, I, C).
STRAY = {
    "E": {"S": 0.7, "I": 0.2, "C": 0.1},
    "S": {"E": 0.6, "I": 0.3, "C": 0.1},
    "I": {"C": 0.4, "S": 0.4, "E": 0.2},
    "C": {"I": 0.6, "S": 0.2, "E": 0.2},
}


def _stray_table(label_noise: float) -> np.ndarray:
    names = list(LABEL_FREQUENCIES)
    return np.array(
        [[1 - label_noise if label == rel else label_noise * STRAY[rel][label] for label in names] for rel in names]
    )


def relation_frequencies(label_noise: float) -> np.ndarray:
    """How often to draw each relation so that the judged labels come out at ESCI's frequencies."""
    target = np.array(list(LABEL_FREQUENCIES.values()))
    frequencies = np.clip(np.linalg.solve(_stray_table(label_noise).T, target), 0.005, None)
    return frequencies / frequencies.sum()


def label_probabilities(relation: np.ndarray, label_noise: float) -> np.ndarray:
    """The true p(label | pair) each label is drawn from, [n, 4] in LABEL_FREQUENCIES' order:
    1 - label_noise on the pair's relation, the rest spread as STRAY says."""
    names = list(LABEL_FREQUENCIES)
    return _stray_table(label_noise)[np.vectorize(names.index, otypes=[np.int64])(relation)]


def _esci_table(spec, rng, judgements, q_ids, q_topic, q_intent) -> tuple[pa.Table, pa.Table]:
    """The ESCI examples, and the true p(label | pair) of each working-set example (by example_id)."""
    query, product, label, truth = judgements
    n_in = len(query)
    n_out = int(round(n_in * spec.outside_fraction / (1 - spec.outside_fraction)))
    # rows outside the working set: other locales, the train split, large-version only; no SQID features
    kind = rng.integers(0, 3, n_out)
    q_all = np.concatenate([query, rng.integers(0, spec.queries, n_out)])
    query_id = q_ids[q_all] + np.where(np.arange(n_in + n_out) < n_in, 0, 1_000_000)
    order = rng.permutation(n_in + n_out)
    text = np.char.add(
        np.char.add(np.array(INTENT_WORDS)[q_intent[q_all] % len(INTENT_WORDS)], " "),
        np.char.add(np.array(TOPIC_WORDS)[q_topic[q_all] % len(TOPIC_WORDS)], " "),
    )
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
    truth_table = pa.table(
        {
            "example_id": pa.array(working, pa.int64()),
            **{f"p_{name}": pa.array(truth[order[working], i]) for i, name in enumerate(LABEL_FREQUENCIES)},
        }
    )
    return pa.table({name: pa.array(values) for name, values in columns.items()}), truth_table


def _write_products(path: Path, spec, space, p_topic, p_intent) -> None:
    """Product embeddings in chunks, each from its own seeded stream: memory bounded by the chunk."""
    schema = pa.schema(
        [
            ("product_id", pa.string()),
            ("clip_text_features", pa.list_(pa.float32())),
            ("clip_image_features", pa.list_(pa.float32())),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for chunk, start in enumerate(range(0, spec.products, PRODUCT_CHUNK)):
            rows = np.arange(start, min(start + PRODUCT_CHUNK, spec.products))
            rng = np.random.default_rng([spec.seed, chunk])
            topic, intent = p_topic[rows], p_intent[rows]
            writer.write_table(
                pa.table(
                    {
                        "product_id": pa.array(product_id(rows)),
                        "clip_text_features": embedding_array(space.embed(topic, intent, rng, noise=0.6)),
                        "clip_image_features": embedding_array(space.embed(topic, intent, rng, noise=0.9, offset=0.5)),
                    },
                    schema=schema,
                )
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
    p_topic, p_intent = _product_cells(spec, rng)
    judgements = _draw_judgements(spec, rng, q_topic, q_intent, p_topic, p_intent)
    esci, truth = _esci_table(spec, rng, judgements, q_ids, q_topic, q_intent)

    with atomic_dir(Path(out_dir)) as tmp:
        (tmp / "sqid").mkdir()
        pq.write_table(esci, tmp / C.ESCI_FILE)
        pq.write_table(truth, tmp / TRUTH_FILE)
        queries = pa.table({"query_id": pa.array(q_ids.astype(str)), "clip_text_features": embedding_array(q_vectors)})
        pq.write_table(queries, tmp / C.QUERY_FEATURES_FILE)
        _write_products(tmp / C.PRODUCT_FEATURES_FILE, spec, space, p_topic, p_intent)
        if legacy_csv:
            write_legacy_query_csv(tmp / C.LEGACY_QUERY_CSV, q_ids, q_vectors, spec.seed)
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
    for name in ("queries", "products", "topics", "intents", "dim", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("mean_judgements", "label_noise", "outside_fraction"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=getattr(defaults, name))
    parser.add_argument("--legacy-csv", action="store_true", help=f"also write {C.LEGACY_QUERY_CSV}")


def run_from_args(args: argparse.Namespace) -> dict:
    fields = SampleSpec.__dataclass_fields__
    spec = SampleSpec(**{name: getattr(args, name) for name in fields})
    return generate(args.out, spec, legacy_csv=args.legacy_csv)


def true_probabilities(raw_dir: Path, merged_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, query ids and the true p(label | pair) [n, 4] (label-id order) of one merged split."""
    truth = pq.read_table(Path(raw_dir) / TRUTH_FILE)
    rows = pq.read_table(Path(merged_dir) / split, columns=["example_id", "query_id", F.LABEL])
    position = {e: i for i, e in enumerate(truth.column("example_id").to_numpy())}
    index = np.array([position[e] for e in rows.column("example_id").to_numpy()])
    order = [F.LABELS_BY_ID[i] for i in range(F.NUM_CLASSES)]  # label-id order: I, C, S, E
    probabilities = np.column_stack([truth.column(f"p_{name}").to_numpy()[index] for name in order])
    return rows.column(F.LABEL).to_numpy(), rows.column("query_id").to_numpy(zero_copy_only=False), probabilities


def ceiling(raw_dir: Path, merged_dir: Path, split: str = "test") -> dict:
    """The best possible scores on one merged split of generated data, from the true p(label | pair):
    accuracy and nDCG by its argmax and expected gain; macro-F1 also with the decision rule the
    model gets (fitted on the validation split's true p), which argmax does not maximise.
    Needs scikit-learn."""
    from mmsearch.metrics import apply_decision_rule, classification_metrics, fit_decision_rule, headline

    labels, query_ids, probabilities = true_probabilities(raw_dir, merged_dir, split)
    best = headline(classification_metrics(labels, probabilities, query_ids))
    rule = fit_decision_rule(*true_probabilities(raw_dir, merged_dir, "val")[::2])
    served = apply_decision_rule(probabilities, rule["class_weights"])
    ruled = classification_metrics(labels, probabilities, query_ids, served)
    best["macro_f1_argmax"] = best["macro_f1"]
    best["macro_f1"] = max(best["macro_f1"], ruled["macro_f1"])
    return {"split": split, "rows": len(labels), **best}
