"""Figures logged to the MLflow run: training curves and confusion matrices (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    from matplotlib import pyplot

    return pyplot


def save(figure, path: Path, dpi: int = 100) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    _pyplot().close(figure)


def plot_training_curves(history: dict, title: str, path: Path) -> None:
    """Loss and accuracy per epoch, training beside validation."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4))
    epochs = history.get("epoch") or np.arange(1, len(history["loss"]) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[metric], marker="o", label=f"train {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title)
    save(figure, path)


def plot_confusion_matrix(metrics: dict, title: str, path: Path) -> None:
    _pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = metrics["confusion_matrix"]
    display = ConfusionMatrixDisplay(np.array(cm["matrix"]), display_labels=cm["labels"])
    display.plot(cmap="Blues", colorbar=False)
    display.ax_.set_title(title)
    save(display.figure_, path)


def plot_reliability(labels: np.ndarray, probabilities: np.ndarray, title: str, path: Path) -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin (top label)."""
    from mmsearch.metrics import expected_calibration_error

    pyplot = _pyplot()
    curve = expected_calibration_error(labels, probabilities)
    used = np.array(curve["count"]) > 0
    figure, ax = pyplot.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot(np.array(curve["confidence"])[used], np.array(curve["accuracy"])[used], marker="o", label="model")
    ax.set_xlabel("confidence (top label)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save(figure, path)


def plot_precision_recall(labels: np.ndarray, probabilities: np.ndarray, title: str, path: Path) -> None:
    """One-vs-rest precision-recall curve of each ESCI label, with its average precision."""
    from sklearn.metrics import PrecisionRecallDisplay

    from mmsearch import features

    pyplot = _pyplot()
    figure, ax = pyplot.subplots(figsize=(6, 5))
    for label_id in range(features.NUM_CLASSES):
        if np.any(labels == label_id):
            PrecisionRecallDisplay.from_predictions(
                labels == label_id, probabilities[:, label_id], ax=ax, name=features.LABELS_BY_ID[label_id]
            )
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save(figure, path)
