"""The bundled generator's world: product types in sibling pairs with attribute values and brands,
the Exact / Substitute / Complement / Irrelevant relations between queries and products, CLIP-like
geometry, and the known p(label | pair) the labels are drawn from. `sample_data` writes it out as
the ESCI and SQID files; docs/sample-data.md explains each piece and why."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmsearch import features

LABEL_FREQUENCIES = {"E": 0.65, "S": 0.22, "I": 0.10, "C": 0.03}
# the product types' words, in sibling pairs 0-1, 2-3, ... (a substitute may be the sibling)
TOPIC_WORDS = [
    *("phone", "smartphone", "laptop", "tablet", "running shoe", "trail shoe", "desk lamp", "floor lamp"),
    *("camera", "camcorder", "guitar", "ukulele", "printer", "scanner", "coffee maker", "espresso machine"),
    *("bike", "scooter", "tent", "hammock", "razor", "trimmer", "drill", "impact driver"),
]
INTENT_WORDS = ["black", "waterproof", "kids", "pro", "wireless", "large", "cheap", "vintage"]
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
    dim: int = features.EMBEDDING_DIM
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


class Space:
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
class Catalogue:
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


def draw_catalogue(spec: SampleSpec, rng: np.random.Generator, accessory: np.ndarray) -> Catalogue:
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
    return Catalogue(topic, intent, brand, decoy, accessory)


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


def draw_judgements(spec, rng, queries: dict, catalogue: Catalogue):
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
    return query, product, names[draw_labels(truth, rng)], truth


def draw_labels(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A column index per row, drawn from that row's probabilities (one uniform draw a row)."""
    drawn = (rng.random(len(probabilities))[:, None] > np.cumsum(probabilities, axis=1)).sum(axis=1)
    return np.minimum(drawn, probabilities.shape[1] - 1)


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
