"""This run's merged data against the champion's training data.

Evidently was the first choice, and was measured (0.7.23, with pandas 2.3.3 in a copy of the ML
environment: its release does not import with pandas 3, which the ML lock pins). On the same
4,000-row samples of the bundled data, side by side in one process, its report (the three
embeddings' drift by the same domain-classifier method, the label's) took 92 s against this
stage's 9.4 s with no drift, 103 s against 11.7 s with drift, and gave the same verdicts (ROC AUC
0.83 / 0.58 / 0.62 against 0.89 / 0.60 / 0.62); it adds 27 packages to the lock, itself
included (litestar, nltk, statsmodels, plotly, faker, ...), and pandas 2 to the ML environment.
Its HTML report is the one thing it does that this does not (2-D densities of each modality,
current beside reference): not worth a nightly 90 s. So the statistics come from scipy and scikit-learn:

- label shares: a chi-square test of the two label distributions;
- per modality (query, product text, product image embeddings): the shift of the mean vector
  (cosine distance of the two means), the distribution of norms (two-sample Kolmogorov-Smirnov),
  and a domain classifier (logistic regression, cross-validated ROC AUC: 0.5 when the two
  samples cannot be told apart, 1.0 when they are disjoint).

Both sides are sampled while streaming (every k-th row), so memory is bounded by the sample.
The report (PNG and JSON) goes to an MLflow run `drift` of this DAG run; the largest AUC is the
run's drift score, and above `drift_threshold` (when set) the run fails before training.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from mmsearch import config, features
from mmsearch.io import DataError, read_json, write_json

log = logging.getLogger(__name__)

SAMPLE_ROWS = 4000
RESULT = "drift.json"
FIGURE = "drift.png"


def sample(merged_dir: Path, columns: list[str], rows: int = SAMPLE_ROWS) -> dict[str, np.ndarray]:
    """Every k-th row of every split's shards (k: total rows / `rows`), read in record batches."""
    from mmsearch.raw import parquet_file

    merged_dir = Path(merged_dir)
    total = read_json(merged_dir / "manifest.json")["rows"]
    step = max(1, math.ceil(total / rows))
    parts: dict[str, list] = {name: [] for name in columns}
    seen = 0
    for path in sorted(merged_dir.glob("*/*.parquet")):
        for batch in parquet_file(path).iter_batches(batch_size=8192, columns=columns):
            keep = np.arange((-seen) % step, batch.num_rows, step)
            seen += batch.num_rows
            for name in columns:
                column = batch.column(name).take(keep)
                if name == features.LABEL:
                    parts[name].append(column.to_numpy())
                else:
                    parts[name].append(column.flatten().to_numpy().reshape(len(keep), -1))
    return {name: np.concatenate(parts[name]) for name in columns}


def _domain_auc(current: np.ndarray, reference: np.ndarray, seed: int) -> float:
    """How well a linear classifier tells the two samples apart (3-fold ROC AUC)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([current, reference])
    y = np.r_[np.ones(len(current)), np.zeros(len(reference))]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, x, y, cv=folds, scoring="roc_auc")))


def modality_drift(current: np.ndarray, reference: np.ndarray, seed: int) -> dict:
    from scipy.stats import ks_2samp

    means = current.mean(axis=0), reference.mean(axis=0)
    cosine = float(means[0] @ means[1] / (np.linalg.norm(means[0]) * np.linalg.norm(means[1]) + 1e-12))
    norms = np.linalg.norm(current, axis=1), np.linalg.norm(reference, axis=1)
    ks = ks_2samp(*norms)
    return {
        "mean_cosine_distance": 1.0 - cosine,
        "norm_mean": [float(norms[0].mean()), float(norms[1].mean())],
        "norm_ks_statistic": float(ks.statistic),
        "norm_ks_pvalue": float(ks.pvalue),
        "classifier_auc": _domain_auc(current, reference, seed),
    }


def label_drift(current: np.ndarray, reference: np.ndarray) -> dict:
    from scipy.stats import chi2_contingency

    counts = np.array([np.bincount(side, minlength=features.NUM_CLASSES) for side in (current, reference)])
    test = chi2_contingency(counts + 1)  # +1: a label absent on both sides leaves the test defined
    shares = counts / counts.sum(axis=1, keepdims=True)
    return {
        "shares": {
            features.LABELS_BY_ID[i]: [float(shares[0, i]), float(shares[1, i])] for i in range(features.NUM_CLASSES)
        },
        "chi2_pvalue": float(test.pvalue),
    }


def compare(current_dir: Path, reference_dir: Path, seed: int = 0) -> tuple[dict, dict, dict]:
    columns = [features.LABEL, *features.EMBEDDING_COLUMNS["query_product"]]
    available = set(read_json(Path(reference_dir) / "manifest.json").get("columns", columns)) | {features.LABEL}
    columns = [c for c in columns if c in available]
    current, reference = sample(current_dir, columns), sample(reference_dir, columns)
    report = {
        "rows": [len(current[features.LABEL]), len(reference[features.LABEL])],
        "labels": label_drift(current[features.LABEL], reference[features.LABEL]),
        "modalities": {name: modality_drift(current[name], reference[name], seed) for name in columns[1:]},
    }
    # Rows present in both samples (most of a nightly run's data) push a cross-validated AUC below
    # 0.5; below 0.5 means "cannot tell them apart" as much as 0.5 does.
    report["score"] = max(0.5, *(m["classifier_auc"] for m in report["modalities"].values()))
    return report, current, reference


def plot(report: dict, current: dict, reference: dict, path: Path) -> None:
    from mmsearch.plots import _pyplot, save

    pyplot = _pyplot()
    modalities = list(report["modalities"])
    figure, axes = pyplot.subplots(1, len(modalities) + 1, figsize=(4 * (len(modalities) + 1), 3.6))
    labels = list(report["labels"]["shares"])
    shares = np.array([report["labels"]["shares"][label] for label in labels])
    for side, name in enumerate(("this run", "champion's data")):
        axes[0].bar(np.arange(len(labels)) + 0.4 * side, shares[:, side], width=0.4, label=name)
    axes[0].set_xticks(np.arange(len(labels)) + 0.2, labels)
    axes[0].set_title(f"label shares (chi² p={report['labels']['chi2_pvalue']:.2g})")
    axes[0].legend()
    for ax, name in zip(axes[1:], modalities):
        found = report["modalities"][name]
        norms = [np.linalg.norm(data[name], axis=1) for data in (current, reference)]
        low, high = min(n.min() for n in norms), max(n.max() for n in norms)
        bins = np.linspace(low - 1e-3, high + 1e-3, 41)  # CLIP embeddings may all have norm 1
        for values, side in zip(norms, ("this run", "champion's data")):
            ax.hist(values, bins=bins, alpha=0.5, label=side)
        shift = f"AUC {found['classifier_auc']:.3f}, mean shift {found['mean_cosine_distance']:.3g}"
        ax.set_title(f"{name}: norms\n{shift}")
    save(figure, path, dpi=90)


def champion_data(cfg: config.RunConfig) -> tuple[Path | None, str]:
    """The champion's merged data (kept by retention), or why there is none."""
    from mmsearch import tracking
    from mmsearch.lineage import RUN_DIR_TAG

    tracking.setup(cfg)
    champion = tracking.champion(cfg)
    if champion is None:
        return None, "no champion yet"
    merged = Path(champion.tags.get(RUN_DIR_TAG, "")) / "merged"
    if not (merged / "manifest.json").exists():
        return None, f"champion v{champion.version}'s merged data is not on this machine ({merged})"
    return merged, f"champion v{champion.version}'s training data"


def run(
    merged_dir: Path,
    reference_dir: Path | None = None,
    parent_run_id: str | None = None,
    *,
    out_dir: Path,
    cfg: config.RunConfig,
    tags: dict,
) -> dict:
    """The drift report of `merged_dir` against `reference_dir` (default: the champion's training
    data), logged to MLflow (nested under `parent_run_id`, the night's run, when given); fails
    when the score exceeds `drift_threshold` (if set)."""
    if reference_dir is not None:
        against = f"the data in {reference_dir}"
        return report_drift(merged_dir, reference_dir, against, out_dir, cfg, tags, parent_run_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reference, against = champion_data(cfg)
    if reference is None:
        result = {"score": None, "reason": f"no drift report: {against}"}
        log.warning("%s", result["reason"])
        write_json(out_dir / RESULT, result)
        return result
    return report_drift(merged_dir, reference, against, out_dir, cfg, tags, parent_run_id)


def report_drift(
    merged_dir: Path,
    reference: Path,
    against: str,
    out_dir: Path,
    cfg: config.RunConfig,
    tags: dict,
    parent_run_id: str | None = None,
) -> dict:
    """Compare, plot, log to MLflow, say it in the log; fail above the threshold."""
    from mmsearch import tracking

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report, current, previous = compare(merged_dir, reference, cfg.seed)
    plot(report, current, previous, out_dir / FIGURE)
    report.update({"reference": str(reference), "against": against})
    write_json(out_dir / RESULT, report)
    mlflow = tracking.setup(cfg)
    with mlflow.start_run(run_name="drift", parent_run_id=parent_run_id, tags=tracking.run_tags("drift", tags)):
        mlflow.log_metrics(
            {"drift/score": report["score"], "drift/labels_chi2_pvalue": report["labels"]["chi2_pvalue"]}
        )
        for name, found in report["modalities"].items():
            mlflow.log_metrics({f"drift/{name}_{key}": value for key, value in found.items() if key != "norm_mean"})
        mlflow.log_artifacts(str(out_dir), artifact_path="drift")
    lines = [f"drift against {against}: score {report['score']:.3f} (domain-classifier ROC AUC; 0.5: none)"]
    lines += [
        f"  {name}: AUC {m['classifier_auc']:.3f}, mean shift {m['mean_cosine_distance']:.4f}, "
        f"norm KS {m['norm_ks_statistic']:.3f}"
        for name, m in report["modalities"].items()
    ]
    lines.append(f"  labels: chi² p={report['labels']['chi2_pvalue']:.3g}")
    log.warning("%s", "\n".join(lines))
    if cfg.drift_threshold and report["score"] > cfg.drift_threshold:
        raise DataError(
            merged_dir,
            f"drift score {report['score']:.3f} exceeds drift_threshold {cfg.drift_threshold} "
            f"against {against}; training stopped (report in MLflow run 'drift')",
        )
    return {"score": report["score"], "against": against, "report": str(out_dir / FIGURE)}
