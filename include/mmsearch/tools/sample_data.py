"""Generate ESCI and SQID files with the real names and schemas, and the structure of search data.

Product types in sibling pairs with attribute values; Exact, Substitute, Complement (a one-way
accessory graph) and Irrelevant (half lexical hard negatives) relations; CLIP-like geometry (a
common direction, brands as nuisance); labels drawn from a known p(label | pair), written beside
the raw files (`generator_truth.parquet`) so the best possible scores are known (`ceiling`);
ESCI rows outside the working set as in the public files. Deterministic for a seed.
docs/sample-data.md explains each piece and why.
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
from mmsearch.raw import PRODUCT_EMBEDDINGS, embedding_array

LABEL_FREQUENCIES = {"E": 0.65, "S": 0.22, "I": 0.10, "C": 0.03}
# the product types' words, in sibling pairs 0-1, 2-3, ... (a substitute may be the sibling)
TOPIC_WORDS = [
    *("phone", "smartphone", "laptop", "tablet", "running shoe", "trail shoe", "desk lamp", "floor lamp"),
    *("camera", "camcorder", "guitar", "ukulele", "printer", "scanner", "coffee maker", "espresso machine"),
    *("bike", "scooter", "tent", "hammock", "razor", "trimmer", "drill", "impact driver"),
]
INTENT_WORDS = ["black", "waterproof", "kids", "pro", "wireless", "large", "cheap", "vintage"]
PRODUCT_CHUNK = 8_192
# The generator's own knowledge, beside the raw files: the pipeline never reads it.
TRUTH_FILE = "generator_truth.parquet"
ATTRIBUTE_SHARE = 0.6  # queries that name an attribute value
HARD_NEGATIVE_SHARE = 0.5  # irrelevant judgements that are lexical hard negatives
DECOY_SHARE = 0.12  # products whose title carries another type's word
SIBLING_SUBSTITUTE_SHARE = 0.4  # substitutes of the sibling type (the rest: another attribute value)
BRANDS = 40
# How much more (or less) often judges dispute each relation than `label_noise` says.
DISPUTE = {"E": 0.75, "S": 1.5, "I": 1.0, "C": 1.75}


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


def accessory_graph(topics: int, rng: np.random.Generator) -> np.ndarray:
    """accessory[k]: the type that complements a query for type k (phone -> case), in another sibling
    pair, with no two-way edge: if k's accessory is j, j's is not k."""
    for _ in range(100):  # a greedy draw can corner itself on few types: draw again
        accessory = np.full(topics, -1)
        for k in rng.permutation(topics):
            options = [j for j in range(topics) if j // 2 != k // 2 and accessory[j] != k]
            if not options:
                break
            accessory[k] = rng.choice(options)
        else:
            return accessory
    raise ValueError(f"no one-way accessory graph over {topics} product types: use at least 4")


class _Space:
    """The shared geometry: a common direction, type, attribute, title-word and brand vectors, and
    the image modality's offset. An item's vector is their sum, each with its own strength."""

    COMMON, TYPE, ATTRIBUTE, WORD, BRAND = 1.35, 0.8, 0.55, 0.45, 0.35

    def __init__(self, spec: SampleSpec, rng: np.random.Generator):
        d = spec.dim
        self.common = _unit(rng.standard_normal(d))
        # sibling types (running shoe, trail shoe) are close: a shared family vector and their own
        family = _unit(rng.standard_normal(((spec.topics + 1) // 2, d)))
        self.types = _unit(family[np.arange(spec.topics) // 2] + 0.8 * _unit(rng.standard_normal((spec.topics, d))))
        # an attribute value means the same across types ("black" phone, "black" shoe), as in CLIP
        self.attributes = _unit(rng.standard_normal((spec.intents, d)))
        self.words = _unit(rng.standard_normal((spec.topics, d)))
        self.brands = _unit(rng.standard_normal((BRANDS, d)))
        self.image_offset = _unit(rng.standard_normal(d))
        self.dim = d

    def embed(self, parts: dict, rng: np.random.Generator, noise: float, image: bool = False) -> np.ndarray:
        """parts: type, attribute (-1: none), brand (-1: none) and, for text, word and extra_word
        (-1: none) per item; every component's strength is jittered per item."""
        n = len(parts["type"])

        def jitter(scale):
            return (scale * rng.uniform(0.75, 1.25, n))[:, None]

        vector = self.COMMON * self.common + jitter(self.TYPE) * self.types[parts["type"]]
        has_attribute = (parts["attribute"] >= 0)[:, None]
        vector = vector + has_attribute * jitter(self.ATTRIBUTE) * self.attributes[parts["attribute"]]
        vector = vector + (parts["brand"] >= 0)[:, None] * jitter(self.BRAND) * self.brands[parts["brand"]]
        if image:
            vector = vector + 0.5 * self.image_offset
        else:
            vector = vector + jitter(self.WORD) * self.words[parts["word"]]
            extra = parts.get("extra_word", np.full(n, -1))
            vector = vector + (extra >= 0)[:, None] * jitter(self.WORD) * self.words[extra]
        vector = vector + noise * _unit(rng.standard_normal((n, self.dim)))
        return _unit(vector).astype(np.float32)


@dataclass
class _Catalogue:
    """Each product's type, attribute value, brand and decoy word (-1: none): what its title says."""

    topic: np.ndarray
    intent: np.ndarray
    brand: np.ndarray
    decoy: np.ndarray
    accessory: np.ndarray

    def title_type(self) -> np.ndarray:
        """The type a title reads as: its own, or the decoy's (an "apple" that is a fruit reads as
        the phone brand's word, and its text embedding with it; its image shows the fruit)."""
        return np.where(self.decoy >= 0, self.decoy, self.topic)

    def title_word(self) -> np.ndarray:
        """A second word in the title: the type an accessory fits ("case for phone"), -1 if none."""
        base_of = {int(a): k for k, a in enumerate(self.accessory)}
        return np.array([base_of.get(int(t), -1) for t in self.topic])


def _catalogue(spec: SampleSpec, rng: np.random.Generator, accessory: np.ndarray) -> _Catalogue:
    """The first products cover every (type, attribute) cell, the next ones give every type a decoy,
    so every relation is drawable."""
    topic = rng.integers(0, spec.topics, spec.products)
    intent = rng.integers(0, spec.intents, spec.products)
    cells = spec.topics * spec.intents
    if spec.products >= cells:
        topic[:cells] = np.arange(cells) // spec.intents
        intent[:cells] = np.arange(cells) % spec.intents
    decoy = np.where(rng.random(spec.products) < DECOY_SHARE, rng.integers(0, spec.topics, spec.products), -1)
    if spec.products >= cells + spec.topics:
        decoy[cells : cells + spec.topics] = np.arange(spec.topics)
    # a decoy word is another sibling pair's word: a title naming its own type is no decoy
    decoy[(decoy >= 0) & (decoy // 2 == topic // 2)] = -1
    if spec.products >= cells + spec.topics:
        clash = cells + np.flatnonzero(decoy[cells : cells + spec.topics] < 0)
        topic[clash] = (np.arange(spec.topics)[clash - cells] + 2) % spec.topics
        decoy[clash] = clash - cells
    brand = rng.integers(0, BRANDS, spec.products)
    return _Catalogue(topic, intent, brand, decoy, accessory)


def product_id(index: np.ndarray) -> np.ndarray:
    return np.char.add("B0", np.char.zfill(np.char.upper(np.vectorize(lambda n: format(n, "X"))(index)), 8))


def _pick(rng: np.random.Generator, keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted key, a random item index whose key equals it (-1 where none has it)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    start = np.searchsorted(sorted_keys, wanted, side="left")
    count = np.searchsorted(sorted_keys, wanted, side="right") - start
    offset = (rng.random(len(wanted)) * np.maximum(count, 1)).astype(np.int64)
    return np.where(count > 0, order[np.minimum(start + offset, len(keys) - 1)], -1)


def _unrelated(rng, topic: np.ndarray, accessory: np.ndarray, topics: int) -> np.ndarray:
    """A type in another sibling pair that is not the query type's accessory."""
    other = rng.integers(0, topics, len(topic))
    for _ in range(20):
        bad = (other // 2 == topic // 2) | (other == accessory[topic])
        if not bad.any():
            break
        other[bad] = rng.integers(0, topics, bad.sum())
    return other


def _draw_judgements(spec, rng, queries: dict, catalogue: _Catalogue):
    """(query index, product index, relation, label, truth): the relation first, then a product
    that fits it, then the judge's label drawn from the pair's true p(label | pair)."""
    names = np.array(list(LABEL_FREQUENCIES))
    per_query = np.maximum(2, rng.poisson(spec.mean_judgements, spec.queries))
    query = np.repeat(np.arange(spec.queries), per_query)
    relation = rng.choice(names, size=len(query), p=relation_frequencies(spec.label_noise))
    q_topic, q_intent = queries["type"][query], queries["attribute"][query]
    topic, intent = q_topic.copy(), q_intent.copy()
    any_intent = rng.integers(0, spec.intents, len(query))
    exact = relation == "E"
    intent[exact & (q_intent < 0)] = any_intent[exact & (q_intent < 0)]
    substitute = relation == "S"
    sibling = substitute & ((q_intent < 0) | (rng.random(len(query)) < SIBLING_SUBSTITUTE_SHARE))
    topic[sibling] = q_topic[sibling] ^ 1
    intent[sibling] = any_intent[sibling]
    other_value = substitute & ~sibling
    intent[other_value] = (q_intent[other_value] + rng.integers(1, spec.intents, other_value.sum())) % spec.intents
    complement = relation == "C"
    topic[complement], intent[complement] = catalogue.accessory[q_topic[complement]], any_intent[complement]
    irrelevant = relation == "I"
    topic[irrelevant] = _unrelated(rng, q_topic[irrelevant], catalogue.accessory, spec.topics)
    intent[irrelevant] = any_intent[irrelevant]

    cell = catalogue.topic * spec.intents + catalogue.intent
    product = _pick(rng, cell, topic * spec.intents + intent)
    hard = irrelevant & (rng.random(len(query)) < HARD_NEGATIVE_SHARE)
    decoys = _pick(rng, catalogue.decoy, q_topic[hard])
    # a decoy that happens to be the query type's accessory is a complement, not a hard negative
    usable = (decoys >= 0) & (catalogue.topic[decoys] != catalogue.accessory[q_topic[hard]])
    product[np.flatnonzero(hard)[usable]] = decoys[usable]
    keep = product >= 0
    first = np.unique(query[keep] * spec.products + product[keep], return_index=True)[1]  # one judgement a pair
    keep = np.flatnonzero(keep)[np.sort(first)]
    query, product, relation = query[keep], product[keep], relation[keep]
    truth = label_probabilities(relation, spec.label_noise)
    drawn = (rng.random(len(relation))[:, None] > np.cumsum(truth, axis=1)).sum(axis=1)
    return query, product, names[np.minimum(drawn, len(names) - 1)], truth


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
    table = []
    for rel in names:
        noise = min(0.6, label_noise * DISPUTE[rel])
        table.append([1 - noise if label == rel else noise * STRAY[rel][label] for label in names])
    return np.array(table)


def relation_frequencies(label_noise: float) -> np.ndarray:
    """How often to draw each relation so that the judged labels come out at ESCI's frequencies."""
    target = np.array(list(LABEL_FREQUENCIES.values()))
    frequencies = np.clip(np.linalg.solve(_stray_table(label_noise).T, target), 0.005, None)
    return frequencies / frequencies.sum()


def label_probabilities(relation: np.ndarray, label_noise: float) -> np.ndarray:
    """The true p(label | pair) each label is drawn from, [n, 4] in LABEL_FREQUENCIES' order:
    the relation undisputed with probability 1 - its noise, the rest spread as STRAY says."""
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
    attribute = np.where(q_intent[q_all] >= 0, np.array(INTENT_WORDS)[q_intent[q_all] % len(INTENT_WORDS)], "")
    words = np.char.add(np.array(TOPIC_WORDS)[q_topic[q_all] % len(TOPIC_WORDS)], " ")
    text = np.char.lstrip(np.char.add(np.char.add(attribute, " "), words))
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


def _write_products(path: Path, spec, space: _Space, catalogue: _Catalogue) -> None:
    """Product embeddings in chunks, each from its own seeded stream: memory bounded by the chunk."""
    schema = pa.schema([("product_id", pa.string()), *((name, pa.list_(pa.float32())) for name in PRODUCT_EMBEDDINGS)])
    title_type, title_word = catalogue.title_type(), catalogue.title_word()
    with pq.ParquetWriter(path, schema) as writer:
        for chunk, start in enumerate(range(0, spec.products, PRODUCT_CHUNK)):
            rows = np.arange(start, min(start + PRODUCT_CHUNK, spec.products))
            rng = np.random.default_rng([spec.seed, chunk])
            parts = {"type": catalogue.topic[rows], "attribute": catalogue.intent[rows], "brand": catalogue.brand[rows]}
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
    space = _Space(spec, rng)
    accessory = accessory_graph(spec.topics, rng)
    q_topic = rng.integers(0, spec.topics, spec.queries)
    q_intent = np.where(rng.random(spec.queries) < ATTRIBUTE_SHARE, rng.integers(0, spec.intents, spec.queries), -1)
    # a query's brand: most queries name none
    q_brand = np.where(rng.random(spec.queries) < 0.2, rng.integers(0, BRANDS, spec.queries), -1)
    queries = {"type": q_topic, "attribute": q_intent, "brand": q_brand, "word": q_topic}
    q_vectors = space.embed(queries, rng, noise=0.55)
    q_ids = rng.choice(np.arange(1, 10 * spec.queries + 1), spec.queries, replace=False).astype(np.int64)
    catalogue = _catalogue(spec, rng, accessory)
    judgements = _draw_judgements(spec, rng, queries, catalogue)
    esci, truth = _esci_table(spec, rng, judgements, q_ids, q_topic, q_intent)

    with atomic_dir(Path(out_dir)) as tmp:
        (tmp / "sqid").mkdir()
        pq.write_table(esci, tmp / C.ESCI_FILE)
        pq.write_table(truth, tmp / TRUTH_FILE)
        queries = pa.table({"query_id": pa.array(q_ids.astype(str)), "clip_text_features": embedding_array(q_vectors)})
        pq.write_table(queries, tmp / C.QUERY_FEATURES_FILE)
        _write_products(tmp / C.PRODUCT_FEATURES_FILE, spec, space, catalogue)
        if legacy_csv:
            write_legacy_query_csv(tmp / C.LEGACY_QUERY_CSV, q_ids, q_vectors, spec.seed)
    working_labels, counts = np.unique(judgements[2], return_counts=True)
    written = {"out_dir": str(out_dir), "judgements": esci.num_rows, "working_set_judgements": len(judgements[0])}
    written |= {"queries": spec.queries, "products": spec.products}
    return written | {"working_set_label_counts": dict(zip(working_labels.tolist(), counts.tolist()))}


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
