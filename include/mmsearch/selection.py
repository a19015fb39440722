"""Stage 5c, selection: the best trained candidate by validation macro-F1. Reads no data at all:
only what each candidate's training reported on the validation split."""

from __future__ import annotations

import logging
from pathlib import Path

from mmsearch import config as C
from mmsearch.io import write_json

log = logging.getLogger(__name__)

SELECTION_METRIC = "macro_f1"


def run(trained: list[dict], out_dir: Path, cfg: C.RunConfig) -> dict:
    """The winner's training summary, with the table it was chosen from; ties go to the first."""
    if not trained:
        raise ValueError("no candidate was trained")
    ranked = sorted(trained, key=lambda t: (-t["validation"][SELECTION_METRIC], t["candidate"]))
    table = [
        {
            "candidate": t["candidate"],
            "overrides": t["overrides"],
            "mlflow_run_id": t["mlflow_run_id"],
            **{f"val_{k}": v for k, v in t["validation"].items()},
        }
        for t in ranked
    ]
    best = {**ranked[0], "selection": {"metric": f"val_{SELECTION_METRIC}", "candidates": table}}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / "selection.json", best)
    for row in table:
        log.info(
            "candidate %d %s: val macro_f1 %.4f, accuracy %.4f",
            row["candidate"],
            row["overrides"] or "{}",
            row["val_macro_f1"],
            row["val_accuracy"],
        )
    log.info("selected candidate %d", best["candidate"])
    return best
