"""`make serve-example`: a re-ranking request to the served champion, built from one query of the
raw data (the bundled sample once `make run` pulled it) and the products judged for it, written to
a file `curl -d @file` can send, sent, and the ranking printed beside the judges' labels."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmsearch import features, paths, raw, sqid
from mmsearch.io import DataError
from mmsearch.stack.settings import StackError, StackSettings, stack_secrets

LABEL_ORDER = ("E", "S", "C", "I")
MODEL_INPUTS = list(features.EMBEDDING_COLUMNS["query_product"])


def _pairs_of_one_query(esci_path: Path, pairs: int) -> pd.DataFrame:
    """Picked by rule, not by hand: of the queries judged on at least `pairs` products, the one
    judged with the most different labels (every one of E, S, C, I where a query has them all),
    the first by id among those; one product of each label first, then a second of each, ..."""
    judged = raw.read_esci(esci_path, ["query_id", "query", "product_id", "esci_label"]).to_pandas()
    per_query = judged.groupby("query_id").agg(products=("product_id", "size"), labels=("esci_label", "nunique"))
    eligible = per_query[per_query.products >= pairs]
    if eligible.empty:
        raise DataError(esci_path, f"no query has {pairs} judged products")
    chosen = eligible.sort_values("labels", ascending=False, kind="stable").index[0]  # ids ascending: groupby sorts
    rows = judged[judged.query_id == chosen].copy()
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


def example_pairs(raw_dir: str | Path = "data/raw", pairs: int = 4) -> pd.DataFrame:
    """`pairs` judged pairs of one query from the raw files: query_id, query, product_id,
    esci_label and the three CLIP embeddings the model reads (768-long float32 arrays)."""
    raw_dir = Path(raw_dir)
    esci_path = raw_dir / paths.ESCI_FILE
    if not esci_path.exists():
        raise DataError(esci_path, "file is missing: `make run` pulls the bundled sample into data/raw")
    rows = _pairs_of_one_query(esci_path, pairs)
    query_columns = {"clip_text_features": features.QUERY_EMBEDDING}
    query = _embeddings(sqid.query_table(raw_dir).path, "query_id", rows.query_id.unique().tolist(), query_columns)
    product_columns = {
        "clip_text_features": features.PRODUCT_TEXT_EMBEDDING,
        "clip_image_features": features.PRODUCT_IMAGE_EMBEDDING,
    }
    product = _embeddings(sqid.product_table(raw_dir).path, "product_id", rows.product_id.tolist(), product_columns)
    frame = rows.merge(query, on="query_id").merge(product, on="product_id")
    return frame[["query_id", "query", "product_id", "esci_label", *MODEL_INPUTS]].reset_index(drop=True)


def example_request(raw_dir: str | Path = "data/raw", pairs: int = 8) -> tuple[dict, pd.DataFrame]:
    """A `/rerank` body (one query's CLIP embedding, `pairs` of its judged products' ids) and the judgements."""
    rows = example_pairs(raw_dir, pairs)
    embedding = [float(v) for v in rows[features.QUERY_EMBEDDING].iloc[0].astype("float32").astype(str)]
    body = {"query_embedding": embedding, "product_ids": rows.product_id.tolist()}
    return body, rows.set_index("product_id")


def main(raw_dir: Path = Path("data/raw"), pairs: int = 8) -> str:
    import httpx

    body, judged = example_request(raw_dir, pairs)
    request = paths.mmsearch_home() / "rerank-example.json"
    request.parent.mkdir(parents=True, exist_ok=True)
    request.write_text(json.dumps(body))
    url = f"{StackSettings.from_env().serve_url}/rerank"
    headers = {"Authorization": f"Bearer {stack_secrets()['rerank_token']}", "Content-Type": "application/json"}
    try:
        response = httpx.post(url, content=request.read_bytes(), headers=headers, timeout=60)
    except httpx.TransportError:
        raise StackError(
            f"nothing answers on {url}: `make up`, then `make serve` once a champion is registered"
        ) from None
    if not response.is_success:
        raise StackError(f"{url} answered HTTP {response.status_code}: {response.text[:500]}")
    answer = response.json()
    query = f"{judged['query'].iloc[0]!r} ({judged.query_id.iloc[0]})"
    lines = [f"request: the query {query} and {len(judged)} products judged for it, from {raw_dir}, in {request}"]
    lines.append(f"ranked by champion v{answer['model_version']} at {url}:")
    lines.append(f"  {'product_id':<12} judged  predicted  gain  {'  '.join(f'p_{label}' for label in LABEL_ORDER)}")
    for product in answer["products"]:
        probabilities = "  ".join(f"{product[f'p_{label}']:.2f}" for label in LABEL_ORDER)
        judged_label = judged.loc[product["product_id"], "esci_label"]
        lines.append(
            f"  {product['product_id']:<12} {judged_label:<7} {product['esci_label']:<10} "
            f"{product['expected_gain']:.2f}  {probabilities}"
        )
    return "\n".join(lines)
