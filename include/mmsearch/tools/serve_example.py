"""`make serve-example`: a request to the served champion, built from judged pairs of the raw
data (the bundled sample once `make run` pulled it), written to a file `curl -d @file` can send,
sent, and the answer printed beside the judges' labels."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmsearch import config as C
from mmsearch import features as F
from mmsearch import raw
from mmsearch.io import DataError
from mmsearch.stack.settings import StackError, StackSettings

MODEL_INPUTS = list(F.EMBEDDING_COLUMNS["query_product"])
LABEL_ORDER = ("E", "S", "C", "I")


def _pairs_of_one_query(esci_path: Path, pairs: int) -> pd.DataFrame:
    """The first query (by id) judged on at least `pairs` products, those with the most
    different labels first: an example that shows more than one label."""
    judged = raw.read_esci(esci_path, ["query_id", "query", "product_id", "esci_label"]).to_pandas()
    counts = judged.groupby("query_id")["product_id"].transform("size")
    candidates = judged[counts >= pairs]
    if candidates.empty:
        raise DataError(esci_path, f"no query has {pairs} judged products")
    rows = candidates[candidates.query_id == candidates.query_id.min()].copy()
    rows["query_id"] = rows.query_id.astype(str)  # ESCI's ids are integers, SQID's strings
    rows["repeat"] = rows.groupby("esci_label").cumcount()
    rows["label_rank"] = rows.esci_label.map(LABEL_ORDER.index)
    return rows.sort_values(["repeat", "label_rank", "product_id"]).head(pairs)


def _embeddings(path: Path, key: str, ids: list, columns: dict[str, str]) -> pd.DataFrame:
    table = pq.read_table(path, columns=[key, *columns], filters=pc.field(key).isin(ids))
    missing = sorted(set(ids) - set(table.column(key).to_pylist()))
    if missing:
        raise DataError(path, "has no embeddings for some judged ids", column=key, rows=missing)
    return table.to_pandas().rename(columns=columns)


def example_pairs(raw_dir: str | Path = "data/raw", pairs: int = 3) -> pd.DataFrame:
    """`pairs` judged pairs of one query from the raw files: query_id, query, product_id,
    esci_label and the three CLIP embeddings the model reads (768-long float32 arrays)."""
    raw_dir = Path(raw_dir)
    esci_path = raw_dir / C.ESCI_FILE
    if not esci_path.exists():
        raise DataError(esci_path, "file is missing: `make run` pulls the bundled sample into data/raw")
    rows = _pairs_of_one_query(esci_path, pairs)
    queries = raw.query_table(raw_dir)
    products = raw.product_table(raw_dir)
    query = _embeddings(
        queries.path, "query_id", rows.query_id.unique().tolist(), {"clip_text_features": F.QUERY_EMBEDDING}
    )
    product_columns = {"clip_text_features": F.PRODUCT_TEXT_EMBEDDING, "clip_image_features": F.PRODUCT_IMAGE_EMBEDDING}
    product = _embeddings(products.path, "product_id", rows.product_id.tolist(), product_columns)
    frame = rows.merge(query, on="query_id").merge(product, on="product_id")
    return frame[["query_id", "query", "product_id", "esci_label", *MODEL_INPUTS]].reset_index(drop=True)


def request_body(frame: pd.DataFrame) -> dict:
    """MLflow's `dataframe_split` body; each float32 as its shortest exact decimal (half the bytes
    of a 17-digit double, and the same float32 once parsed)."""
    data = [
        [[float(v) for v in row[name].astype("float32").astype(str)] for name in MODEL_INPUTS]
        for _, row in frame.iterrows()
    ]
    return {"dataframe_split": {"columns": MODEL_INPUTS, "data": data}}


def _answer_table(frame: pd.DataFrame, predictions: list[dict]) -> list[str]:
    lines = [f"  {'product_id':<12} judged  predicted  {'  '.join(f'p_{label}' for label in LABEL_ORDER)}"]
    for (_, row), predicted in zip(frame.iterrows(), predictions, strict=True):
        probabilities = "  ".join(f"{predicted[f'p_{label}']:.2f}" for label in LABEL_ORDER)
        lines.append(f"  {row.product_id:<12} {row.esci_label:<7} {predicted['esci_label']:<10} {probabilities}")
    return lines


def main(raw_dir: Path = Path("data/raw"), pairs: int = 3) -> str:
    import httpx

    frame = example_pairs(raw_dir, pairs)
    request = C.mmsearch_home() / "serve-example.json"
    request.parent.mkdir(parents=True, exist_ok=True)
    request.write_text(json.dumps(request_body(frame)))
    url = f"{StackSettings.from_env().serve_url}/invocations"
    try:
        response = httpx.post(
            url, content=request.read_bytes(), headers={"Content-Type": "application/json"}, timeout=60
        )
    except httpx.TransportError:
        raise StackError(
            f"nothing answers on {url}: `make up`, then `make serve` once a champion is registered"
        ) from None
    if not response.is_success:
        raise StackError(f"{url} answered HTTP {response.status_code}: {response.text[:500]}")
    query = frame["query"].iloc[0]
    return "\n".join(
        [
            f"request: {len(frame)} judged pairs of the query {query!r} ({frame.query_id.iloc[0]}) from {raw_dir},"
            f" in {request} ({request.stat().st_size // 1024} KB)",
            f"answer of {url}:",
            *_answer_table(frame, response.json()["predictions"]),
            f"the same request with curl: curl -s {url} -H 'Content-Type: application/json' -d @{request}",
        ]
    )
