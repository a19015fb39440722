"""The gate: does a new version become champion? Decided on this run's test split with the
uncertainty of a few hundred queries (docs/design.md, The model)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    champion_version: str | None = None


def _difference(metric: str, name: str, found: dict, label: str | None = None) -> str:
    """e.g. `macro_f1 +0.031 over baseline_clip (95 % CI +0.012 to +0.050)`."""
    return (
        f"{metric} {found['difference']:+.3f} over {label or name} "
        f"(95 % CI {found['low']:+.3f} to {found['high']:+.3f})"
    )


def decide(
    metric: str,
    scores: dict,
    differences: dict,
    champion_version: str | None = None,
    champion_error: str | None = None,
    min_improvement: float = 0.0,
) -> Decision:
    """The gate, on this run's test split, with the uncertainty of a few hundred queries:

    - never promoted when a baseline is significantly better (the difference's upper bound < 0);
    - with no champion, promoted when no baseline is;
    - over a champion, promoted only when the lower bound of the difference from it is above
      `min_improvement`; a champion that could not be scored keeps its alias.

    `scores`: test metrics by scorer; `differences`: scorer -> metric -> the model's difference
    from it (`difference`, `low`, `high`: the 95 % interval of a paired bootstrap)."""
    ours = scores["model"][metric]
    baselines = sorted(name for name in scores if name.startswith("baseline_"))
    worse = [name for name in baselines if differences[name][metric]["high"] < 0]
    if worse:
        losses = "; ".join(_difference(metric, name, differences[name][metric]) for name in worse)
        return Decision(False, f"{metric} {ours:.4f} is significantly below a baseline: {losses}", champion_version)
    best_baseline = min(baselines, key=lambda name: differences[name][metric]["difference"])
    against_baseline = _difference(metric, best_baseline, differences[best_baseline][metric])
    if champion_version is None:
        return Decision(
            True, f"no champion yet; {metric} {ours:.4f}, {against_baseline}, no baseline significantly better"
        )
    if champion_error is not None:
        unscored = f"champion v{champion_version} could not be scored on this data: {champion_error}"
        return Decision(False, unscored, champion_version)
    found = differences["champion"][metric]
    promote = found["low"] > min_improvement
    verdict = "above" if promote else "not above"
    over = _difference(metric, "champion", found, f"champion v{champion_version}")
    reason = f"{over}: lower bound {verdict} min_improvement {min_improvement:g}; {against_baseline}"
    return Decision(promote, reason, champion_version)
