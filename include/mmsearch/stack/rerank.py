"""The champion as a re-ranker: a query embedding and its candidates' product ids in, the products
ordered by expected ESCI gain out.

The product side is the service's own data: the catalogue the champion was trained with (its
version's `dvc_md5.sqid/product_features.parquet` tag, found in the DVC cache), or a file given by
path, held as two contiguous float32 matrices and an id index. The model is the registered
version's serving SavedModel (the transform graph and the Keras model) converted once to a LiteRT
flatbuffer and run by LiteRT's interpreter: the same graph without importing TensorFlow, whose
runtime alone is 770 MB of the service's memory (docs/serving.md has the measurements).
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

from mmsearch import config as C
from mmsearch import dvc_repo, raw
from mmsearch import features as F
from mmsearch.io import DataError
from mmsearch.metrics import GAIN_BY_ID
from mmsearch.serving import DECISION_RULE, PROBABILITY_COLUMNS, served_label_ids
from mmsearch.stack.clients import REGISTERED_MODEL

log = logging.getLogger(__name__)

CATALOGUE_TAG = f"dvc_md5.{C.PRODUCT_FEATURES_FILE}"
GAINS = GAIN_BY_ID.astype(np.float32)
MODEL_INPUTS = F.EMBEDDING_COLUMNS["query_product"]
GIVE_CATALOGUE = "give the product file with --catalogue (make serve: MMSEARCH_SERVE_CATALOGUE=path)"


class RequestError(ValueError):
    """A request the service refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Catalogue:
    ids: np.ndarray
    index: dict[str, int]
    text: np.ndarray
    image: np.ndarray
    path: Path
    md5: str

    @classmethod
    def load(cls, path: Path, md5: str = "") -> Catalogue:
        """The product file's embeddings, checked batch by batch into preallocated matrices (one copy)."""
        path = Path(path)
        table = raw.FeatureTable(path, "product_id", raw.PRODUCT_EMBEDDINGS, raw.PRODUCT_FEATURE_COLUMNS)
        rows = raw.open_parquet(path).metadata.num_rows
        text, image = (np.empty((rows, F.EMBEDDING_DIM), np.float32) for _ in range(2))
        ids = []
        for offset, keys, matrices in raw.embedding_batches(table, F.EMBEDDING_DIM):
            end = offset + len(keys)
            text[offset:end], image[offset:end] = (matrices[name] for name in raw.PRODUCT_EMBEDDINGS)
            ids.extend(keys.to_pylist())
        index: dict[str, int] = {}
        for row, key in enumerate(ids):
            index.setdefault(key, row)  # validate refuses conflicting duplicates; the first is kept
        return cls(np.array(ids, dtype=object), index, text, image, path, md5 or dvc_repo.file_digest(path))

    def rows_of(self, product_ids: list) -> np.ndarray:
        unknown = [p for p in product_ids if p not in self.index]
        if unknown:
            missing = f"{len(unknown)} product ids are not in the catalogue ({self.md5[:12]})"
            raise RequestError(422, f"{missing}: {unknown[:10]}")
        return np.fromiter((self.index[p] for p in product_ids), np.int64, len(product_ids))


def catalogue_path(version_tags: dict, dvc_repo_dir: Path) -> tuple[Path, str]:
    """The champion's product file in the DVC cache, by the md5 its version's lineage records."""
    md5 = version_tags.get(CATALOGUE_TAG)
    if not md5:
        raise DataError(C.PRODUCT_FEATURES_FILE, f"the champion's lineage has no {CATALOGUE_TAG} tag: {GIVE_CATALOGUE}")
    path = dvc_repo.cached_file(dvc_repo_dir, md5)
    if not path.exists():
        raise DataError(path, f"the champion's catalogue (md5 {md5}) is not in the DVC cache: {GIVE_CATALOGUE}")
    return path, md5


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
        found = {"expected_gain": probabilities @ GAINS, "esci_label": [F.LABELS_BY_ID[i] for i in labels]}
        for label, column in PROBABILITY_COLUMNS.items():
            found[column] = np.ascontiguousarray(probabilities[:, F.LABEL_IDS[label]])
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


def champion_model_version(name: str = REGISTERED_MODEL):
    """The MLflow ModelVersion the champion alias names (clients.champion_version asks the REST API
    from the Airflow environment, which has no MLflow)."""
    import mlflow

    return mlflow.MlflowClient().get_model_version_by_alias(name, "champion")


def load_champion(cache_dir: Path, version, name: str = REGISTERED_MODEL) -> Champion:
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
    if vector.shape != (F.EMBEDDING_DIM,):
        raise RequestError(
            422, f"query_embedding must hold {F.EMBEDDING_DIM} numbers, found shape {list(vector.shape)}"
        )
    bad = np.flatnonzero(~np.isfinite(vector))
    if bad.size:
        raise RequestError(422, f"query_embedding holds NaN or infinity at {bad[:10].tolist()}")
    return vector[None, :]


def rerank(champion: Champion, catalogue: Catalogue, queries: list[dict]) -> list[list[dict]]:
    """Each query's candidates ordered by expected gain (ties keep the request's order), scored in one call."""
    parsed = []
    for number, query in enumerate(queries):
        if not isinstance(query, dict):
            raise RequestError(422, f"query {number} must be an object with query_embedding and product_ids")
        ids = query.get("product_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(p, str) for p in ids):
            raise RequestError(422, "product_ids must be a non-empty list of product id strings")
        top_k = query.get("top_k", len(ids))
        if not isinstance(top_k, int) or top_k < 1:
            raise RequestError(422, f"top_k must be a positive integer, not {top_k!r}")
        parsed.append((query_vector(query.get("query_embedding")), ids, catalogue.rows_of(ids), top_k))
    rows = np.concatenate([found[2] for found in parsed])
    tiled = np.concatenate([np.repeat(vector, len(ids), axis=0) for vector, ids, _, _ in parsed])
    answer = champion.answer(champion.probabilities(tiled, catalogue.text[rows], catalogue.image[rows]))
    ranked, start = [], 0
    for _, ids, _, top_k in parsed:
        span = slice(start, start + len(ids))
        order = np.argsort(-answer["expected_gain"][span], kind="stable")[:top_k] + start
        ranked.append([_row(answer, int(i), catalogue.ids[rows[i]]) for i in order])
        start += len(ids)
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
    if array.ndim != 3 or array.shape[1:] != (len(MODEL_INPUTS), F.EMBEDDING_DIM) or not len(array):
        shape = f"[n, 3, {F.EMBEDDING_DIM}] (query, text, image), not {list(array.shape)}"
        raise RequestError(422, f"the array must be {shape}")
    array = _finite(array.reshape(len(array), -1), "the array")
    query, text, image = (np.ascontiguousarray(part) for part in np.split(array, len(MODEL_INPUTS), axis=1))
    answer = champion.answer(champion.probabilities(query, text, image))
    return {"model_version": champion.version, **answer}
