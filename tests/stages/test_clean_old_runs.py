"""Retention on real run directories: what goes, what stays, and the disk after ten nights."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmsearch.stages import clean_old_runs

BULK = (
    "merged/train/part-00000.parquet",
    "transform/transformed_examples/Split-train/x.tfrecord",
    "train/candidate-0/checkpoints/epoch-1.keras",
    "baselines/query/backup/state",
    "merged/.tmp-x/part",
)
KEPT = (
    "summary.json",
    "evaluate/metrics.json",
    "evaluate/confusion_model.png",
    "transform/transform_graph/schema",
    "train/candidate-0/train.json",
    "drift/drift.png",
)


def make_run(root: Path, name: str, night: int, trained: bool = True) -> Path:
    run = root / name
    for relative in BULK + KEPT:
        path = run / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (1000 if relative in BULK else 10))
    summary = {"registry": {"version": str(night)}} if trained else {"skipped": {"reason": "nothing changed"}}
    (run / "summary.json").write_text(json.dumps(summary))
    os.utime(run / "summary.json", (night * 1000, night * 1000))  # older nights first
    return run


def intermediates(run: Path) -> int:
    return sum(p.stat().st_size for p in run.rglob("*") if p.is_file() and p.stat().st_size == 1000)


def test_ten_nights_leave_at_most_keep_plus_one_runs_of_intermediates(tmp_path):
    champion = None
    for night in range(1, 11):
        run = make_run(tmp_path, f"scheduled__night-{night:02d}", night)
        champion = champion or run  # the first night's model stays champion all along
        clean_old_runs.clean(tmp_path, keep=2, protect=[str(run), str(champion)])
    with_bulk = sorted(r.name for r in tmp_path.iterdir() if intermediates(r))
    assert with_bulk == ["scheduled__night-01", "scheduled__night-09", "scheduled__night-10"]  # ≤ N + 1
    for run in tmp_path.iterdir():  # summaries, metrics, figures and the transform graph always stay
        assert all((run / relative).exists() for relative in KEPT), run.name


def test_skipped_runs_do_not_count_as_kept_and_protected_runs_stay(tmp_path):
    old = make_run(tmp_path, "night-1", 1)
    challenger = make_run(tmp_path, "night-2", 2)
    make_run(tmp_path, "night-3", 3)
    skipped = make_run(tmp_path, "night-4", 4, trained=False)
    current = make_run(tmp_path, "night-5", 5)
    result = clean_old_runs.clean(tmp_path, keep=2, protect=[str(current), str(challenger)])
    assert sorted(result["cleaned"]) == ["night-1", "night-4"]
    assert result["freed_bytes"] == 2 * 5 * 1000
    assert intermediates(old) == 0 and intermediates(skipped) == 0
    assert intermediates(challenger) == 5000 and intermediates(current) == 5000
    assert not (old / "merged").exists() and (old / "transform" / "transform_graph").exists()
