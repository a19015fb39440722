"""Batch re-ranking for the search team (the mmsearch_rank DAG, run when a new champion is registered).

Scores every working-set judgement (the champion's merged data, all splits) with the champion as
it serves, and writes `ranked.parquet`: per query, its products by expected gain (the ESCI gains
weighted by the class probabilities), with rank, label and class probabilities. The embeddings
are read in record batches and dropped once scored, so memory stays flat in the number of pairs;
what is kept is a few numbers per pair. The mean nDCG of that ranking goes to the log and MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mmsearch import config, features
from mmsearch.io import atomic_dir, write_json

log = logging.getLogger(__name__)

RANKED = "ranked.parquet"
BATCH_ROWS = 512  # larger batches cost memory (the embeddings of a batch) and gain no speed


def score(merged_dir: Path, scorer, batch_rows: int = BATCH_ROWS) -> dict[str, np.ndarray]:
    """Every merged row, scored batch by batch; only ids, labels and probabilities are kept.
    The embeddings go to the served model as matrices (a DataFrame of arrays costs time and memory)."""
    from mmsearch.raw import parquet_file  # streams: no pre-buffered row groups

    columns = ["query_id", "product_id", features.LABEL, *scorer.columns]
    parts: dict[str, list] = {"query_id": [], "product_id": [], "label": [], "probabilities": []}
    for path in sorted(Path(merged_dir).glob("*/*.parquet")):
        for batch in parquet_file(path).iter_batches(batch_size=batch_rows, columns=columns):
            for name, column in (("query_id", "query_id"), ("product_id", "product_id"), ("label", features.LABEL)):
                parts[name].append(batch.column(column).to_numpy(zero_copy_only=False))
            parts["probabilities"].append(scorer.probabilities(batch).astype(np.float32))
    return {name: np.concatenate(values) for name, values in parts.items()}


def ranked_table(scored: dict):
    """Per query, products by expected gain (highest first), ranks from 1."""
    import pyarrow as pa

    from mmsearch.metrics import GAIN_BY_ID

    gain = scored["probabilities"] @ GAIN_BY_ID
    order = np.lexsort((-gain, scored["query_id"]))
    query_ids = scored["query_id"][order]
    starts = np.flatnonzero(np.r_[True, query_ids[1:] != query_ids[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)])) + 1
    columns = {
        "query_id": query_ids,
        "product_id": scored["product_id"][order],
        "rank": rank.astype(np.int32),
        "expected_gain": gain[order].astype(np.float32),
        "label": [features.LABELS_BY_ID[i] for i in scored["label"][order]],
    }
    for i in range(features.NUM_CLASSES):
        columns[f"p_{features.LABELS_BY_ID[i]}"] = scored["probabilities"][order, i]
    return pa.table(columns)


def run(
    version: str | None = None,
    merged_dir: Path | None = None,
    *,
    out_dir: Path,
    cfg: config.RunConfig,
    tags: dict,
) -> dict:
    """Rank the working set with the current champion (or a given registered `version`) on the
    merged data it was trained on (or `merged_dir`); log the ranking's nDCG to MLflow."""
    import pyarrow.parquet as pq

    from mmsearch import tracking
    from mmsearch.lineage import RUN_DIR_TAG
    from mmsearch.metrics import mean_ndcg

    mlflow = tracking.setup(cfg)
    found = mlflow.MlflowClient().get_model_version(cfg.registered_model_name, str(version)) if version else None
    champion = found or tracking.champion(cfg)
    if champion is None:
        raise RuntimeError(f"{cfg.registered_model_name} has no champion to rank with")
    merged_dir = Path(merged_dir or Path(champion.tags.get(RUN_DIR_TAG, "")) / "merged")
    if not (merged_dir / "manifest.json").exists():
        raise FileNotFoundError(2, f"champion v{champion.version}'s merged data is gone", str(merged_dir))
    scorer = tracking.PyfuncScorer(f"models:/{champion.name}/{champion.version}")
    scored = score(merged_dir, scorer)
    table = ranked_table(scored)
    true_gain = np.array([features.ESCI_GAINS[label] for label in table.column("label").to_pylist()])
    ndcg, queries = mean_ndcg(table.column("query_id").to_numpy(), true_gain, table.column("expected_gain").to_numpy())
    result = {
        "champion_version": champion.version,
        "merged_dir": str(merged_dir),
        "rows": table.num_rows,
        "queries": int(len(np.unique(scored["query_id"]))),
        "ndcg": ndcg,
        "ndcg_queries": queries,
        "ranked": str(Path(out_dir) / RANKED),
    }
    with atomic_dir(out_dir) as tmp:
        pq.write_table(table, tmp / RANKED)
        write_json(tmp / "rank.json", result)
    with mlflow.start_run(
        run_name="rank", tags={**tracking.run_tags("rank", tags), "champion_version": champion.version}
    ):
        mlflow.log_metrics({"rank/ndcg": ndcg, "rank/rows": table.num_rows})
    log.warning(
        f"ranked {table.num_rows:,} pairs of {result['queries']:,} queries with {champion.name} v{champion.version}: "
        f"mean nDCG {ndcg:.4f} over {queries} queries -> {result['ranked']}"
    )
    return result
