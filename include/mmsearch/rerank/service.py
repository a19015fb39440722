"""The champion as a re-ranker: a query embedding and its candidates' product ids in, the products
ordered by expected ESCI gain out.

The product side is the service's own data: the published catalogue (the newest product file the
training DAG's `publish_catalogue` checked, whatever version the model was trained on; its vectors
mapped read-only from the arrays it was published as), or, where nothing was published yet, the
catalogue the champion was trained with (its version's `dvc_md5.sqid/product_features.parquet` tag,
found in the DVC cache), or a file given by path, read into two float32 matrices; and an id index.
Candidates the catalogue does not know are
named in the answer and left out of the ranking (or refused, with `strict`). The model is the
registered version's serving SavedModel (the transform graph and the Keras model) converted once
to a LiteRT flatbuffer and run by LiteRT's interpreter: the same graph without importing
TensorFlow, whose runtime alone is 770 MB of the service's memory (docs/serving.md).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmsearch import catalogue, config, dvc_repo, features, paths, raw
from mmsearch.io import DataError
from mmsearch.metrics import GAIN_BY_ID
from mmsearch.serving import DECISION_RULE, PROBABILITY_COLUMNS, served_label_ids

log = logging.getLogger(__name__)

CATALOGUE_TAG = f"dvc_md5.{paths.PRODUCT_FEATURES_FILE}"
GAINS = GAIN_BY_ID.astype(np.float32)
MODEL_INPUTS = features.EMBEDDING_COLUMNS["query_product"]
GIVE_CATALOGUE = "give the product file with --catalogue (make serve: MMSEARCH_SERVE_CATALOGUE=path)"


class RequestError(ValueError):
    """A request the service refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CatalogueSource:
    """Where a catalogue comes from: its file, its md5 (when known before reading it), how it was chosen."""

    path: Path
    md5: str = ""
    origin: str = "given"  # published | champion's lineage | given
    published_at: str = ""


@dataclass(frozen=True)
class Catalogue:
    ids: np.ndarray
    index: dict[str, int]
    text: np.ndarray
    image: np.ndarray
    source: CatalogueSource
    md5: str

    @classmethod
    def load(cls, source: CatalogueSource) -> Catalogue:
        """A published catalogue's arrays, mapped; or a product file's vectors, checked batch by batch
        into preallocated matrices (one copy)."""
        path = Path(source.path)
        if source.origin == "published":
            ids, text, image = catalogue.open_arrays(path)
        else:
            rows = raw.open_parquet(path).metadata.num_rows
            text, image = (np.empty((rows, features.EMBEDDING_DIM), np.float32) for _ in range(2))
            ids = np.array(catalogue.fill(path, text, image), dtype=object)
            pa.default_memory_pool().release_unused()  # the batches' buffers, not kept beside the matrices
        index: dict[str, int] = {}
        for row, key in enumerate(ids):
            index.setdefault(key, row)  # validation refuses conflicting duplicates; the first is kept
        return cls(ids, index, text, image, source, source.md5 or dvc_repo.file_digest(path))

    def rows_of(self, product_ids: list, strict: bool = False) -> tuple[list[str], np.ndarray, list[str]]:
        """The known ids, their rows, and the unknown ids; RequestError when none is known, or any
        is unknown and the request is `strict`."""
        rows = np.fromiter((self.index.get(p, -1) for p in product_ids), np.int64, len(product_ids))
        known = rows >= 0
        if known.all():
            return product_ids, rows, []
        unknown = [p for p, found in zip(product_ids, known) if not found]
        missing = f"{len(unknown)} of {len(product_ids)} product ids are not in the catalogue ({self.md5[:12]})"
        if strict or not known.any():
            raise RequestError(422, f"{missing}{' (strict)' if strict else ''}: {unknown[:10]}")
        return [p for p, found in zip(product_ids, known) if found], rows[known], unknown


def published_source() -> CatalogueSource | None:
    """The catalogue the training DAG published last, or None before the first publish."""
    found = catalogue.published()
    return CatalogueSource(Path(found["path"]), found["md5"], "published", found["published_at"]) if found else None


def catalogue_source(version_tags: dict, dvc_repo_dir: Path, given: Path | None = None) -> CatalogueSource:
    """The catalogue to serve: the file given, else the published one, else the champion's own
    (the product file its version's lineage names by md5, in the DVC cache)."""
    if given:
        return CatalogueSource(Path(given))
    published = published_source()
    if published:
        return published
    md5 = version_tags.get(CATALOGUE_TAG)
    if not md5:
        raise DataError(
            paths.PRODUCT_FEATURES_FILE, f"the champion's lineage has no {CATALOGUE_TAG} tag: {GIVE_CATALOGUE}"
        )
    path = dvc_repo.cached_file(dvc_repo_dir, md5)
    if not path.exists():
        raise DataError(path, f"the champion's catalogue (md5 {md5}) is not in the DVC cache: {GIVE_CATALOGUE}")
    return CatalogueSource(path, md5, "champion's lineage")


class Champion:
    """One registered version, loaded: its LiteRT interpreter and its decision rule."""

    def __init__(self, version: str, model_dir: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.version = version
        flatbuffer = model_dir / "serving_model.tflite"
        if not flatbuffer.exists():
            convert(model_dir / "artifacts" / "serving_model", flatbuffer)
        threads = min(2, os.cpu_count() or 1)  # 1,000 rows: 5.0 ms on two threads, 6.7 on one
        self._runner = Interpreter(model_path=str(flatbuffer), num_threads=threads).get_signature_runner()
        rule = model_dir / "artifacts" / f"{DECISION_RULE}.json"
        self.class_weights = json.loads(rule.read_text())["class_weights"] if rule.exists() else None

    def probabilities(self, query: np.ndarray, text: np.ndarray, image: np.ndarray) -> np.ndarray:
        found = self._runner(query_embedding=query, product_text_embedding=text, product_image_embedding=image)
        return found["probabilities"]

    def answer(self, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        """Expected gain, served label (the decision rule applied) and p_* of each row."""
        labels = served_label_ids(probabilities, self.class_weights)
        found = {"expected_gain": probabilities @ GAINS, "esci_label": [features.LABELS_BY_ID[i] for i in labels]}
        for label, column in PROBABILITY_COLUMNS.items():
            found[column] = np.ascontiguousarray(probabilities[:, features.LABEL_IDS[label]])
        return found


def convert(saved_model: Path, flatbuffer: Path) -> None:
    """The serving SavedModel as a LiteRT flatbuffer, converted in a child process (the one place
    the service's code imports TensorFlow, which keeps its 770 MB out of the service)."""
    code = (
        "import sys, tensorflow as tf; "
        "c = tf.lite.TFLiteConverter.from_saved_model(sys.argv[1], signature_keys=['serving_default']); "
        "open(sys.argv[2] + '.part', 'wb').write(c.convert())"
    )
    result = subprocess.run([sys.executable, "-c", code, str(saved_model), str(flatbuffer)], capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"converting {saved_model} failed: {result.stderr.decode()[-2000:]}")
    Path(f"{flatbuffer}.part").rename(flatbuffer)


def champion_model_version(name: str = config.REGISTERED_MODEL):
    """The MLflow ModelVersion the champion alias names (clients.champion_version asks the REST API
    from the Airflow environment, which has no MLflow)."""
    import mlflow

    return mlflow.MlflowClient().get_model_version_by_alias(name, "champion")


def load_champion(cache_dir: Path, version, name: str = config.REGISTERED_MODEL) -> Champion:
    """A registered version (an MLflow ModelVersion), downloaded and converted once into `cache_dir`."""
    import mlflow

    model_dir = cache_dir / f"{name}-v{version.version}"
    if not model_dir.exists():
        part = cache_dir / f".{model_dir.name}.part"
        mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}", dst_path=str(part))
        part.rename(model_dir)
    return Champion(str(version.version), model_dir)


def _finite(matrix: np.ndarray, what: str) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=-1))
    if bad.size:
        raise RequestError(422, f"{what} holds NaN or infinity (rows {bad[:10].tolist()})")
    return matrix


def query_vector(value) -> np.ndarray:
    try:
        vector = np.asarray(value, np.float32)
    except (TypeError, ValueError):
        raise RequestError(422, "query_embedding must be a list of numbers") from None
    if vector.shape != (features.EMBEDDING_DIM,):
        raise RequestError(
            422, f"query_embedding must hold {features.EMBEDDING_DIM} numbers, found shape {list(vector.shape)}"
        )
    bad = np.flatnonzero(~np.isfinite(vector))
    if bad.size:
        raise RequestError(422, f"query_embedding holds NaN or infinity at {bad[:10].tolist()}")
    return vector[None, :]


@dataclass(frozen=True)
class Query:
    vector: np.ndarray
    ids: list[str]  # the known candidates, in the request's order
    rows: np.ndarray
    unknown: list[str]
    top_k: int


def parse_query(number: int, query, catalogue: Catalogue) -> Query:
    if not isinstance(query, dict):
        raise RequestError(422, f"query {number} must be an object with query_embedding and product_ids")
    ids = query.get("product_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(p, str) for p in ids):
        raise RequestError(422, "product_ids must be a non-empty list of product id strings")
    top_k, strict = query.get("top_k", len(ids)), query.get("strict", False)
    if not isinstance(top_k, int) or top_k < 1:
        raise RequestError(422, f"top_k must be a positive integer, not {top_k!r}")
    if not isinstance(strict, bool):
        raise RequestError(422, f"strict must be true or false, not {strict!r}")
    vector = query_vector(query.get("query_embedding"))
    return Query(vector, *catalogue.rows_of(ids, strict), top_k)


def rerank(champion: Champion, catalogue: Catalogue, queries: list[dict]) -> list[dict]:
    """Each query's known candidates ordered by expected gain (ties keep the request's order),
    every query scored in one call; its unknown candidates named apart."""
    parsed = [parse_query(number, query, catalogue) for number, query in enumerate(queries)]
    rows = np.concatenate([query.rows for query in parsed])
    tiled = np.concatenate([np.repeat(query.vector, len(query.ids), axis=0) for query in parsed])
    answer = champion.answer(champion.probabilities(tiled, catalogue.text[rows], catalogue.image[rows]))
    ranked, start = [], 0
    for query in parsed:
        span = slice(start, start + len(query.ids))
        order = np.argsort(-answer["expected_gain"][span], kind="stable")[: query.top_k] + start
        products = [_row(answer, int(i), catalogue.ids[rows[i]]) for i in order]
        ranked.append({"products": products, "unknown_product_ids": query.unknown})
        start += len(query.ids)
    return ranked


def _row(answer: dict, i: int, product_id: str) -> dict:
    found = {"product_id": product_id, "expected_gain": float(answer["expected_gain"][i])}
    found["esci_label"] = answer["esci_label"][i]
    found.update({column: float(answer[column][i]) for column in PROBABILITY_COLUMNS.values()})
    return found


def _npy(body: bytes) -> np.ndarray:
    """An .npy body as an array over the body's own bytes (np.load would copy them: 1 ms of 9 MB)."""
    import io

    stream = io.BytesIO(body)
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    if fortran_order or dtype != np.float32:
        raise ValueError(f"it must be C-ordered float32, not {dtype}{' in Fortran order' if fortran_order else ''}")
    return np.frombuffer(body, dtype, offset=stream.tell()).reshape(shape)


def score_vectors(champion: Champion, body: bytes) -> dict:
    """Full vectors as a `.npy` [n, 3, 768] float32 (query, product text, product image): labels and p_*."""
    try:
        array = _npy(body)
    except ValueError as error:
        raise RequestError(400, f"the body is not an .npy array: {error}") from None
    if array.ndim != 3 or array.shape[1:] != (len(MODEL_INPUTS), features.EMBEDDING_DIM) or not len(array):
        shape = f"[n, 3, {features.EMBEDDING_DIM}] (query, text, image), not {list(array.shape)}"
        raise RequestError(422, f"the array must be {shape}")
    array = _finite(array.reshape(len(array), -1), "the array")
    query, text, image = (np.ascontiguousarray(part) for part in np.split(array, len(MODEL_INPUTS), axis=1))
    answer = champion.answer(champion.probabilities(query, text, image))
    return {"model_version": champion.version, **answer}
