"""`make bench`'s figures, summarised: a row per stage (medians over the repeats, the overhead of the
DAG over the direct stages), the model's quality beside the best possible, as CSV and Markdown."""

from __future__ import annotations

import csv
import os
import statistics
from pathlib import Path

# the stages `make bench` runs directly, as the DAG's tasks do (the candidates' trainings besides)
DIRECT_STAGES = ("validate", "merge", "transform", "candidates", "baselines", "select", "evaluate", "register")


QUALITY = ("accuracy", "macro_f1", "ndcg")


def quality_rows(pairs: int, scores: dict, ceiling: dict, selection: dict) -> list[dict]:
    """The test metrics of the model and each baseline with their 95 % intervals, the model's
    difference from each baseline with its interval, the ceiling, and each one's gap to it; what
    the model reads (`selection`: select's selection.json)."""
    from mmsearch.summary import representation_text

    uncertainty = scores["uncertainty"]
    rows = []
    for name, metrics in scores["metrics"].items():
        found = {
            "intervals": uncertainty["intervals"].get(name, {}),
            "difference": uncertainty["differences"].get(name),
        }
        if name == "model":
            found["reads"] = representation_text(selection, selection["selection"]["candidates"])
        rows.append({"pairs": pairs, "scorer": name, **{k: metrics[k] for k in QUALITY}, **found})
    expected = f"the true p; nDCG expected over label draws {ceiling['ndcg_expected']:.4f}"
    rows.append(
        {
            "pairs": pairs,
            "scorer": "best possible",
            **{k: ceiling[k] for k in QUALITY},
            "intervals": {},
            "reads": expected,
        }
    )
    for row in rows:
        row["gap"] = {k: row[k] - ceiling[k] for k in QUALITY}
    return rows


def summarise(pairs: int, measured: dict[str, list[dict]]) -> list[dict]:
    """One row per stage: median wall time over the passes, min-max, highest peak; the overhead of
    the DAG over the direct stages, and of each task over its stage."""
    rows = []
    for name, runs in measured.items():
        seconds = [r["seconds"] for r in runs]
        median = statistics.median(seconds)
        rows.append(
            {
                "pairs": pairs,
                "stage": name,
                "rows": runs[-1]["rows"],
                "seconds": median,
                "spread": f"{min(seconds):.1f}-{max(seconds):.1f}" if len(runs) > 1 else "",
                "rows_per_s": runs[-1]["rows"] / median if median > 0 else 0.0,
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "output_mb": runs[-1]["output_mb"],
            }
        )
    direct = {row["stage"]: row["seconds"] for row in rows}
    for row in rows:
        if row["stage"] in ("drift", "rank"):
            row["floor_units"] = row["seconds"] / direct["numpy floor"]
        if row["stage"] == "airflow dags test":
            trains = sum(seconds for stage, seconds in direct.items() if stage.startswith("train ["))
            row["overhead"] = row["seconds"] / (trains + sum(direct[s] for s in DIRECT_STAGES))
            row["floor_units"] = row["seconds"] / direct["numpy floor"]
            floors = f"{row['overhead']:.2f}x, {row['floor_units']:.1f} numpy floors (medians)"
            print(f"  dags test overhead {floors}", flush=True)
        elif row["stage"].startswith("task "):
            name = row["stage"].split(".")[-1].replace("[", " [")
            if name in direct:
                row["overhead"] = row["seconds"] / direct[name]
    return rows


def write_report(rows: list[dict], quality: list[dict], out_dir: Path) -> Path:
    from mmsearch.summary import with_interval

    out_dir.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))  # overhead, floors: some rows only
    with open(out_dir / "bench.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"cores: {os.cpu_count()}; wall s: the median of the repeats, min-max beside it",
        "",
        "| pairs | stage | rows | wall s | min-max s | rows/s | peak RSS MB | output MB | overhead | numpy floors |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        overhead = f"{r['overhead']:.2f}" if "overhead" in r else ""
        floors = f"{r['floor_units']:.1f}" if "floor_units" in r else ""
        lines.append(
            f"| {r['pairs']:,} | {r['stage']} | {r['rows']:,} | {r['seconds']:.1f} | {r.get('spread', '')} | "
            f"{r['rows_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | {r['output_mb']:,.1f} | {overhead} | {floors} |"
        )
    lines += [
        "",
        "Model quality on the test split of the last direct pass, beside the best possible (the generator's "
        "true p(label | pair)): [95 % interval] of a bootstrap over test queries; model - scorer: the model's "
        "difference from it (paired bootstrap); gap = score - best possible; reads: the representation "
        "select chose on validation. Best possible is the decision from the true p: it bounds each score's "
        "expectation over draws of the labels; the test labels are one draw, on which a scorer can land above it "
        "by chance (most often nDCG, whose best is close to the model's)",
        "",
        "| pairs | scorer | reads | accuracy | macro-F1 | nDCG | model - scorer: accuracy | macro-F1 | nDCG "
        "| gap accuracy | gap macro-F1 | gap nDCG |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for q in quality:
        gap, difference = q["gap"], q.get("difference") or {}
        cells = [with_interval(q[k], q["intervals"].get(k)) for k in QUALITY]
        for k in QUALITY:
            d = difference.get(k)
            cells.append(f"{d['difference']:+.4f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else "")
        cells += [f"{gap[k]:+.4f}" for k in QUALITY]
        lines.append(f"| {q['pairs']:,} | {q['scorer']} | {q.get('reads', '')} | " + " | ".join(cells) + " |")
    report = out_dir / "bench.md"
    report.write_text("\n".join(lines) + "\n")
    return report
