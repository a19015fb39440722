"""A training run's summary: `summary.json` in the run's directory (written by register, completed
by promote, or written alone by a run that skipped), the few lines a person reads of it (the
register and promote task logs, `make run`), and the registered version's model card."""

from __future__ import annotations

from pathlib import Path

from mmsearch.gate import Decision
from mmsearch.io import aligned_columns, read_json, write_json

SUMMARY = "summary.json"
CARD_METRICS = ("accuracy", "macro_f1", "ndcg")


def with_interval(value: float, bounds: list | None) -> str:
    """`0.4988 [0.452, 0.541]`: a metric and its 95 % interval, when it has one."""
    return f"{value:.4f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")


def metrics_table(summary: dict) -> str:
    """The test metrics of the model and each baseline with their intervals, as a Markdown table."""
    heading = "| test split | " + " | ".join(CARD_METRICS) + " |\n|" + " --- |" * (len(CARD_METRICS) + 1)
    rows = []
    for name in ["model", *sorted(name for name in summary["metrics"] if name != "model")]:
        metrics, bounds = summary["metrics"][name], summary.get("intervals", {}).get(name, {})
        rows.append(f"| {name} | " + " | ".join(with_interval(metrics[k], bounds.get(k)) for k in CARD_METRICS) + " |")
    return "\n".join([heading, *rows])


def write_skipped(run_dir: Path, tags: dict, changes: dict) -> dict:
    """The summary of a run that found nothing new: why, and which version it matched."""
    summary = {"run_id": tags.get("run_id", ""), "run_dir": str(run_dir), "skipped": changes}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / SUMMARY, summary)
    return summary


def update_registry(run_dir: Path, registry: dict) -> dict:
    """The run's summary with its registry part replaced (after a person's answer to a promotion)."""
    summary = {**read_json(Path(run_dir) / SUMMARY), "registry": registry}
    write_json(Path(run_dir) / SUMMARY, summary)
    return summary


def approval_line(approval: dict | None) -> str | None:
    """What became of a promotion the gate granted with `promotion: approve`; None without one."""
    if not approval:
        return None
    if approval["status"] == "awaiting":
        hours = approval["timeout_hours"]
        return f"approval: awaiting a person (model.approve_promotion in the Airflow UI, {hours:g} h at most)"
    comment = f": {approval['comment']}" if approval.get("comment") else ""
    return f"approval: {approval['status']} by {approval['by']} at {approval['at']}{comment}"


def representation_text(model: dict, candidates: list[dict]) -> str:
    """How many whitened components the model reads, among those its candidates read; empty for a
    model without."""
    components = model.get("components")
    if not components:
        return ""
    widths = sorted({row["components"] for row in candidates if row.get("components")})
    among = f" (candidates: {'/'.join(map(str, widths))}, chosen on validation)" if len(widths) > 1 else ""
    return f"{components} whitened components{among}"


def summary_text(summary: dict) -> str:
    """The run in a few lines, as a person reads it: test metrics beside the baselines, epochs,
    the version, the gate's decision (and a person's), where the outputs are."""
    if "skipped" in summary:
        return (
            f"mmsearch run {summary['run_id']}: skipped training, nothing registered: "
            f"{summary['skipped']['reason']}\noutputs: {summary['run_dir']}"
        )
    registry, model = summary["registry"], summary["model"]
    intervals = summary.get("intervals", {})
    lines = [
        f"mmsearch run {summary['run_id']}: {summary['test_rows']:,} test judgements [95 % intervals]",
        f"{'test split':<18} " + " ".join(f"{key:<20}" for key in CARD_METRICS).rstrip(),
    ]
    scorers = ["model", *sorted(name for name in summary["metrics"] if name != "model")]
    for name in scorers:
        metrics, bounds = summary["metrics"][name], intervals.get(name, {})
        cells = " ".join(f"{with_interval(metrics[key], bounds.get(key)):<20}" for key in CARD_METRICS)
        lines.append(f"{name:<18} {cells}".rstrip())
    runs, best = model["epochs_run"], model["best_epoch"]
    epochs = f"best epoch {best} of {runs}" if best else f"no epoch of {runs} beat its starting regression"
    candidate = f"candidate {model['candidate']} {model['overrides'] or '{}'} of {len(summary['candidates'])}"
    reads = representation_text(model, summary["candidates"])
    reads = f", {reads}" if reads else ""
    lines.append(f"model: {candidate}{reads}, {epochs}, validation macro_f1 {model['validation']['macro_f1']:.4f}")
    version = f"{registry['registered_model']} v{registry['version']}, aliases {', '.join(registry['aliases'])}"
    lines.append(f"registered {version}: {registry['decision']['reason']}")
    approval = approval_line(registry.get("approval"))
    lines += [approval] if approval else []
    lines.append(f"outputs: {summary['run_dir']}")
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A table as aligned columns in a code block. MLflow renders a markdown table without cell
    padding or borders, so its columns run together (`0.5867 [0.538, 0.638]0.9493`)."""
    return "```\n" + "\n".join(aligned_columns([header, *rows], gap="   ")) + "\n```"


def _candidates_table(model: dict) -> str:
    """The card's table of the candidates select chose from: what each read, its validation scores."""
    table = model.get("selection", {}).get("candidates", [])
    if not table:
        return ""
    # the overrides last: the widest column, the figures stay in view beside the candidate
    header = ["candidate", "whitened components", "parameters", "val macro-F1", "val accuracy", "overrides"]
    rows = [
        [
            str(row["candidate"]),
            str(row.get("components") or ""),
            f"{row['parameters']:,}",
            f"{row['val_macro_f1']:.4f}",
            f"{row['val_accuracy']:.4f}",
            str(row["overrides"] or {}),
        ]
        for row in sorted(table, key=lambda row: row["candidate"])
    ]
    return (
        "**Candidates** (validation split; select keeps the fewest parameters within one standard error "
        f"of the best macro-F1):\n\n{text_table(header, rows)}\n\n"
    )


def model_card(
    model: dict,
    scores: dict,
    lineage: dict,
    decision: Decision,
    metric: str,
    intervals: dict | None = None,
    awaiting_approval: bool = False,
) -> str:
    """The registered version's description: what it is, its data, its scores beside the baselines."""
    intervals = intervals or {}
    rows = [
        [name, *(with_interval(m[key], intervals.get(name, {}).get(key)) for key in CARD_METRICS)]
        for name, m in scores.items()
    ]
    data = "\n".join(f"- `{path}`: md5 `{md5}`" for path, md5 in sorted(lineage.get("file_md5", {}).items()))
    overrides = model.get("overrides") or {}
    verdict = "promoted to champion" if decision.promote else "stays challenger"
    if awaiting_approval:
        verdict = "granted; the promotion awaits a person's approval (Airflow: model.approve_promotion)"
    return (
        f"**ESCI relevance model** ({model['feature_set']}), candidate {model.get('candidate', 0)} "
        f"`{overrides}`, validation macro-F1 {model['validation']['macro_f1']:.4f} (select: the fewest "
        f"parameters within one standard error of the best); "
        f"best epoch {model['best_epoch']} of {model['epochs_run']}.\n\n"
        f"{_candidates_table(model)}"
        f"**Test split** (query groups never seen in training or selection; [95 % interval], a "
        f"bootstrap over its queries):\n\n"
        f"{text_table(['scorer', 'accuracy', 'macro-F1', 'nDCG'], rows)}\n\n"
        f"**Gate** ({metric}): {verdict}: {decision.reason}.\n\n"
        f"**Data**: DVC `{lineage.get('dvc_md5', '')}`\n{data}\n"
    )
