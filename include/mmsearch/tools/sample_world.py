"""The bundled generator's world: hundreds of product types of uneven popularity, in sibling pairs
and departments, products with several attributes, queries naming some of them, brands,
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
    *("sofa", "armchair", "kettle", "toaster", "backpack", "duffel bag", "watch", "fitness tracker"),
    *("headphones", "earbuds", "monitor", "projector", "blender", "juicer", "sneaker", "sandal"),
    *("jacket", "raincoat", "mattress", "futon", "stroller", "car seat", "board game", "puzzle"),
    *("skillet", "wok", "vacuum", "mop", "router", "modem", "keyboard", "mouse"),
    *("speaker", "soundbar", "desk", "standing desk", "dumbbell", "kettlebell", "fan", "heater"),
    *("grill", "smoker", "kayak", "paddle board", "sunglasses", "goggles", "wallet", "purse"),
]
# The types past the word list are further product lines of the same words.
LINE_WORDS = ["", " II", " III", " IV", " V", " VI", " VII", " VIII", " IX", " X"]
# Each product has a value of every attribute; a query names some of them. An attribute value
# means the same across types ("black" phone, "black" shoe), as in CLIP.
ATTRIBUTE_WORDS = [
    ["black", "white", "red", "blue", "green", "grey"],
    ["kids", "women", "men", "pro", "travel", "family"],
    ["waterproof", "wireless", "large", "vintage", "compact", "cheap"],
]
NAMED_ATTRIBUTES = {0: 0.4, 1: 0.4, 2: 0.2}  # how many attribute values a query names
HARD_NEGATIVE_SHARE = 0.5  # irrelevant judgements that are lexical hard negatives
DECOY_SHARE = 0.12  # products whose title carries another type's word
SIBLING_SUBSTITUTE_SHARE = 0.4  # substitutes of the sibling type (the rest: another attribute value)
FAMILIES_PER_DEPARTMENT = 8  # sibling pairs in a department (electronics, kitchen, outdoors, ...)
# Judgement slots drawn per judgement kept: a query about a rare type asking for two attribute
# values may have no product that fits a slot's relation; the next slot is used instead.
SLOTS_PER_JUDGEMENT = 6
# How much more (or less) often judges dispute each relation than `label_noise` says.
DISPUTE = {"E": 0.75, "S": 1.5, "I": 1.0, "C": 1.75}


@dataclass(frozen=True)
class SampleSpec:
    queries: int = 300
    products: int = 2400
    mean_judgements: float = 24.0
    topics: int = 240
    attributes: int = 3
    values: int = 4
    popularity: float = 1.0  # Zipf exponent of the types' popularity (0: all types alike)
    brands: int = 120
    label_noise: float = 0.2
    outside_fraction: float = 0.2
    dim: int = features.EMBEDDING_DIM
    seed: int = 7

    def __post_init__(self):
        if not 1 <= self.attributes <= len(ATTRIBUTE_WORDS) or not 2 <= self.values <= len(ATTRIBUTE_WORDS[0]):
            raise ValueError(
                f"attributes must be 1-{len(ATTRIBUTE_WORDS)} and values 2-{len(ATTRIBUTE_WORDS[0])} "
                f"(the words queries say: ATTRIBUTE_WORDS), not {self.attributes} and {self.values}"
            )


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def type_names(topics: int) -> list[str]:
    """phone, smartphone, ..., then phone II, smartphone II, ...: siblings keep sibling words."""
    words = len(TOPIC_WORDS)
    return [TOPIC_WORDS[k % words] + LINE_WORDS[(k // words) % len(LINE_WORDS)] for k in range(topics)]


def popularity(spec: SampleSpec, rng: np.random.Generator) -> np.ndarray:
    """Each type's share of the products and of the queries: Zipf over a random order of types,
    as a real catalogue has a few types everybody searches and a long tail."""
    rank = rng.permutation(spec.topics) + 1
    weights = rank.astype(float) ** -spec.popularity
    return weights / weights.sum()


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
    """The shared geometry: a common direction, department, family, type, attribute value, title-word
    and brand vectors, and the image modality's offset. An item's vector is their sum, each with its
    own strength."""

    COMMON, TYPE, ATTRIBUTE, WORD, BRAND = 1.35, 0.8, 0.4, 0.45, 0.35

    def __init__(self, spec: SampleSpec, rng: np.random.Generator):
        d = spec.dim
        self.common = _unit(rng.standard_normal(d))
        # sibling types (running shoe, trail shoe) are close: a shared family vector and their own;
        # families of one department (electronics, kitchen) share a department vector
        families = (spec.topics + 1) // 2
        department = _unit(rng.standard_normal((-(-families // FAMILIES_PER_DEPARTMENT), d)))
        family = _unit(
            0.6 * department[np.arange(families) // FAMILIES_PER_DEPARTMENT] + _unit(rng.standard_normal((families, d)))
        )
        self.types = _unit(family[np.arange(spec.topics) // 2] + 0.8 * _unit(rng.standard_normal((spec.topics, d))))
        self.values = _unit(rng.standard_normal((spec.attributes, spec.values, d)))
        self.words = _unit(rng.standard_normal((spec.topics, d)))
        self.brands = _unit(rng.standard_normal((spec.brands, d)))
        self.image_offset = _unit(rng.standard_normal(d))
        self.dim = d

    def embed(self, parts: dict, rng: np.random.Generator, noise: float, image: bool = False) -> np.ndarray:
        """parts: type, values ([n, attributes], -1: not shown), brand (-1: none) and, for text, word
        and extra_word (-1: none) per item; every component's strength is jittered per item."""
        n = len(parts["type"])

        def jitter(scale):
            return (scale * rng.uniform(0.75, 1.25, n))[:, None]

        vector = self.COMMON * self.common + jitter(self.TYPE) * self.types[parts["type"]]
        for attribute, value in enumerate(parts["values"].T):
            shown = (value >= 0)[:, None]
            vector = vector + shown * jitter(self.ATTRIBUTE) * self.values[attribute, value]
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
    """Each product's type, attribute values ([products, attributes]), brand and decoy word (-1:
    none): what its title says."""

    topic: np.ndarray
    values: np.ndarray
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


def draw_catalogue(spec: SampleSpec, rng: np.random.Generator, accessory: np.ndarray, shares: np.ndarray) -> Catalogue:
    """Types drawn by popularity; the first products give every type a product, the next ones
    every type a decoy, so every relation is drawable."""
    topic = rng.choice(spec.topics, spec.products, p=shares)
    values = rng.integers(0, spec.values, (spec.products, spec.attributes))
    if spec.products >= spec.topics:
        topic[: spec.topics] = np.arange(spec.topics)
    decoy = np.where(rng.random(spec.products) < DECOY_SHARE, rng.integers(0, spec.topics, spec.products), -1)
    covered = 2 * spec.topics
    if spec.products >= covered:
        decoy[spec.topics : covered] = np.arange(spec.topics)
    # a decoy word is another sibling pair's word: a title naming its own type is no decoy
    decoy[(decoy >= 0) & (decoy // 2 == topic // 2)] = -1
    if spec.products >= covered:
        clash = spec.topics + np.flatnonzero(decoy[spec.topics : covered] < 0)
        topic[clash] = (np.arange(spec.topics)[clash - spec.topics] + 2) % spec.topics
        decoy[clash] = clash - spec.topics
    brand = rng.integers(0, spec.brands, spec.products)
    return Catalogue(topic, values, brand, decoy, accessory)


def draw_queries(spec: SampleSpec, rng: np.random.Generator, shares: np.ndarray) -> dict:
    """Each query's type (by popularity), the attribute values it names (-1: not named) and brand."""
    topic = rng.choice(spec.topics, spec.queries, p=shares)
    named = rng.choice(list(NAMED_ATTRIBUTES), spec.queries, p=list(NAMED_ATTRIBUTES.values()))
    order = np.argsort(rng.random((spec.queries, spec.attributes)), axis=1)  # which attributes it names
    values = np.where(order < named[:, None], rng.integers(0, spec.values, (spec.queries, spec.attributes)), -1)
    brand = np.where(rng.random(spec.queries) < 0.2, rng.integers(0, spec.brands, spec.queries), -1)
    return {"type": topic, "values": values, "brand": brand, "word": topic}


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


def _pick_fitting(rng, catalogue: Catalogue, topic: np.ndarray, wanted: np.ndarray, values: int) -> np.ndarray:
    """For each row, a random product of type `topic` with the attribute values `wanted` asks for
    (-1: any value), or -1 where the catalogue has none."""
    product = np.full(len(topic), -1)
    weights = values ** np.arange(wanted.shape[1])
    asked = (wanted >= 0) @ (2 ** np.arange(wanted.shape[1]))  # which attributes each row constrains
    for mask in np.unique(asked):
        rows = np.flatnonzero(asked == mask)
        constrained = (mask >> np.arange(wanted.shape[1])) & 1
        keys = catalogue.topic * values ** wanted.shape[1] + catalogue.values @ (weights * constrained)
        wanted_keys = topic[rows] * values ** wanted.shape[1] + np.maximum(wanted[rows], 0) @ (weights * constrained)
        product[rows] = _pick(rng, keys, wanted_keys)
    return product


def _unrelated(rng, topic: np.ndarray, accessory: np.ndarray, topics: int) -> np.ndarray:
    """A type in another sibling pair that is not the query type's accessory."""
    other = rng.integers(0, topics, len(topic))
    for _ in range(20):
        bad = (other // 2 == topic // 2) | (other == accessory[topic])
        if not bad.any():
            break
        other[bad] = rng.integers(0, topics, bad.sum())
    return other


def _wanted(spec, rng, relation: np.ndarray, q_topic: np.ndarray, q_values: np.ndarray, accessory: np.ndarray):
    """The type and attribute values (-1: any) a product must have to stand in `relation` to its query."""
    topic, wanted = q_topic.copy(), np.full_like(q_values, -1)
    exact = relation == "E"
    wanted[exact] = q_values[exact]
    named = q_values >= 0
    substitute = relation == "S"
    sibling = substitute & (~named.any(axis=1) | (rng.random(len(relation)) < SIBLING_SUBSTITUTE_SHARE))
    topic[sibling] = q_topic[sibling] ^ 1
    # another value of one attribute the query named, the others as named
    other_value = np.flatnonzero(substitute & ~sibling)
    changed = np.where(named[other_value], rng.random((len(other_value), spec.attributes)), -1).argmax(axis=1)
    wanted[other_value] = q_values[other_value]
    shift = rng.integers(1, spec.values, len(other_value))
    wanted[other_value, changed] = (q_values[other_value, changed] + shift) % spec.values
    complement = relation == "C"
    topic[complement] = accessory[q_topic[complement]]
    irrelevant = relation == "I"
    topic[irrelevant] = _unrelated(rng, q_topic[irrelevant], accessory, spec.topics)
    return topic, wanted


def draw_judgements(spec, rng, queries: dict, catalogue: Catalogue):
    """(query index, product index, relation, label, truth): the relation first, then a product
    that fits it, then the judge's label drawn from the pair's true p(label | pair)."""
    frequencies = calibrated_frequencies(spec, queries, catalogue)
    query, product, relation = _draw_pairs(spec, rng, queries, catalogue, frequencies)
    truth = label_probabilities(relation, spec.label_noise)
    return query, product, np.array(list(LABEL_FREQUENCIES))[draw_labels(truth, rng)], truth


def calibrated_frequencies(spec, queries: dict, catalogue: Catalogue, rounds: int = 4) -> np.ndarray:
    """Relation frequencies to draw slots with so that the judgements kept come out at the
    frequencies `relation_frequencies` solves for: a rare type's query runs out of exact matches
    first, so exact slots are drawn more often than the share they end up with."""
    target = relation_frequencies(spec.label_noise)
    frequencies = target
    for round_ in range(rounds):
        rng = np.random.default_rng([spec.seed, 1_000 + round_])
        relation = _draw_pairs(spec, rng, queries, catalogue, frequencies)[2]
        kept = np.array([(relation == name).mean() for name in LABEL_FREQUENCIES])
        # bounded steps: a relation no slot can fit (a tiny catalogue) must not take every slot
        frequencies = frequencies * np.clip(target / np.maximum(kept, 1e-3), 0.2, 5.0)
        frequencies = frequencies / frequencies.sum()
    return frequencies


def _draw_pairs(spec, rng, queries: dict, catalogue: Catalogue, frequencies: np.ndarray):
    """(query index, product index, relation) per judgement. A query has `SLOTS_PER_JUDGEMENT`
    slots per judgement it gets; it keeps the first slots a product fits, one judgement a product."""
    names = np.array(list(LABEL_FREQUENCIES))
    per_query = np.maximum(2, rng.poisson(spec.mean_judgements, spec.queries))
    query = np.repeat(np.arange(spec.queries), SLOTS_PER_JUDGEMENT * per_query)
    relation = rng.choice(names, size=len(query), p=frequencies)
    q_topic = queries["type"][query]
    topic, wanted = _wanted(spec, rng, relation, q_topic, queries["values"][query], catalogue.accessory)
    product = _pick_fitting(rng, catalogue, topic, wanted, spec.values)
    hard = (relation == "I") & (rng.random(len(query)) < HARD_NEGATIVE_SHARE)
    decoys = _pick(rng, catalogue.decoy, q_topic[hard])
    # a decoy that happens to be the query type's accessory is a complement, not a hard negative
    usable = (decoys >= 0) & (catalogue.topic[decoys] != catalogue.accessory[q_topic[hard]])
    product[np.flatnonzero(hard)[usable]] = decoys[usable]
    keep = product >= 0
    first = np.unique(query[keep] * spec.products + product[keep], return_index=True)[1]  # one judgement a pair
    keep = np.flatnonzero(keep)[np.sort(first)]
    # the first per_query[q] kept slots of each query (rows are grouped by query, in slot order)
    starts = np.searchsorted(query[keep], query[keep], side="left")
    keep = keep[np.arange(len(keep)) - starts < per_query[query[keep]]]
    return query[keep], product[keep], relation[keep]


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
