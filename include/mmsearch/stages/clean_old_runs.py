"""Retention: each run leaves its bulky intermediates under runs/<run_id> (merged shards,
transformed examples, checkpoints: 3.6 GB at the real working set's size). After a successful
run, those of older runs go, except in the last `keep` successful runs and in the runs the
champion and challenger came from (drift and ranking read the champion's merged data).
Summaries, metrics, reports and figures stay.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mmsearch import config
from mmsearch.io import read_json

log = logging.getLogger(__name__)

# Relative to a run directory; `**/` also matches nested candidates' directories.
BULKY = ("merged", "transform/transformed_examples", "**/checkpoints", "**/backup", "**/.tmp-*")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _trained(run_dir: Path) -> bool:
    """A run that got as far as a registered version (a skipped run has nothing to keep)."""
    summary = run_dir / "summary.json"
    return summary.exists() and "registry" in read_json(summary)


def _finished(run_dir: Path) -> float:
    """When a run ended: its summary's time (a cleaned directory's own mtime moves; this does not)."""
    summary = run_dir / "summary.json"
    return (summary if summary.exists() else run_dir).stat().st_mtime


def bulky_paths(run_dir: Path) -> list[Path]:
    found = {p for pattern in BULKY for p in Path(run_dir).glob(pattern)}
    return sorted(p for p in found if not any(parent in found for parent in p.parents))


def clean(runs_root: Path, keep: int, protect: list[str]) -> dict:
    """Delete the bulky intermediates of every run but the newest `keep` successful ones and
    `protect` (this run, the champion's and challenger's). Returns what went and what it freed."""
    runs_root = Path(runs_root)
    runs = sorted((d for d in runs_root.iterdir() if d.is_dir()), key=_finished, reverse=True)
    recent = [d for d in runs if _trained(d)][:keep]
    kept = {d.resolve() for d in recent} | {Path(p).resolve() for p in protect}
    cleaned, freed = [], 0
    for run_dir in runs:
        if run_dir.resolve() in kept:
            continue
        paths = bulky_paths(run_dir)
        if not paths:
            continue
        for path in paths:
            freed += _size(path)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        cleaned.append(run_dir.name)
    summary = f"intermediates kept for {len(kept)} runs; {len(cleaned)} older runs cleaned, {freed / 1e6:.1f} MB freed"
    log.info("retention: %s", summary)
    print(f"retention: {summary}")
    return {"kept": sorted(str(d) for d in kept), "cleaned": cleaned, "freed_bytes": freed}


def run(registry: dict, *, out_dir: Path, cfg: config.RunConfig, tags: dict) -> dict:
    """After a successful run: `out_dir` is the run's own directory, among every run's (its parent,
    `$MMSEARCH_HOME/runs`); kept are it, the last `keep_runs` and the runs `registry` (register's
    result) names as the champion's and challenger's."""
    out_dir = Path(out_dir)
    return clean(out_dir.parent, cfg.keep_runs, protect=[str(out_dir), *registry["lineage_run_dirs"]])
