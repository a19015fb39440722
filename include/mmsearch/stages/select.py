"""The best trained candidate by validation macro-F1, with the
one-standard-error rule: among the candidates within one standard error of the best, the one
with the fewest parameters. On a small validation split the larger model's lead is often
noise, and it is the larger model that generalises worse to new queries. Reads no data at
all: only what each candidate's training reported on the validation split."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from mmsearch import config
from mmsearch.io import write_json

log = logging.getLogger(__name__)

SELECTION_METRIC = "macro_f1"


def standard_error(trained: dict) -> float:
    """The binomial standard error of a candidate's validation accuracy: the noise scale of its
    validation scores (macro-F1 has no closed form, and is noisier, not less)."""
    accuracy, rows = trained["validation"]["accuracy"], max(trained["validation_rows"], 1)
    return math.sqrt(accuracy * (1 - accuracy) / rows)


def run(trained: list[dict], *, out_dir: Path, cfg: config.RunConfig, tags: dict) -> dict:
    """The winner's training summary (`trained`: each candidate's train.json), with the table it was
    chosen from (best score first)."""
    if not trained:
        raise ValueError("no candidate was trained")
    ranked = sorted(trained, key=lambda t: (-t["validation"][SELECTION_METRIC], t["candidate"]))
    best_score, tolerance = ranked[0]["validation"][SELECTION_METRIC], standard_error(ranked[0])
    close = [t for t in ranked if t["validation"][SELECTION_METRIC] >= best_score - tolerance]
    winner = min(close, key=lambda t: (t["parameters"], t["candidate"]))
    rule = f"the fewest parameters within one standard error ({tolerance:.4f}) of the best val_{SELECTION_METRIC}"
    table = [
        {
            "candidate": t["candidate"],
            "overrides": t["overrides"],
            "mlflow_run_id": t["mlflow_run_id"],
            "parameters": t["parameters"],
            "components": t.get("components"),
            **{f"val_{k}": v for k, v in t["validation"].items()},
        }
        for t in ranked
    ]
    selected = {**winner, "selection": {"metric": f"val_{SELECTION_METRIC}", "rule": rule, "candidates": table}}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / "selection.json", selected)
    for row in table:
        found = (
            row["candidate"],
            row["overrides"] or "{}",
            row["parameters"],
            row["val_macro_f1"],
            row["val_accuracy"],
        )
        log.info("candidate %d %s (%d parameters): val macro_f1 %.4f, accuracy %.4f", *found)
    log.info("selected candidate %d: %s", winner["candidate"], rule)
    return selected
