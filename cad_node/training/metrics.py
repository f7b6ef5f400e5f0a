"""Binary classification metrics, patient-level bootstrap intervals and plots."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

FloatArray = npt.NDArray[np.float64]
Statistic = Callable[[npt.NDArray[np.int64], FloatArray], float]

METRIC_NAMES = ("auc", "accuracy", "precision", "sensitivity", "specificity", "f1")


@dataclass(frozen=True)
class Confusion:
    """Confusion-matrix counts of a binary decision."""

    tp: int
    fp: int
    tn: int
    fn: int

    def as_matrix(self) -> list[list[int]]:
        """Rows = truth (negative, positive), columns = prediction (negative, positive)."""
        return [[self.tn, self.fp], [self.fn, self.tp]]


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def confusion(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> Confusion:
    """Count true/false positives/negatives of 0/1 predictions."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    return Confusion(
        tp=int(np.sum(t & p)),
        fp=int(np.sum(~t & p)),
        tn=int(np.sum(~t & ~p)),
        fn=int(np.sum(t & ~p)),
    )


def roc_auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks); NaN with one class only."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_metrics(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float
) -> dict[str, float]:
    """Accuracy, precision, sensitivity, specificity and F1 at ``score >= threshold``."""
    return threshold_metrics_at(y_true, scores, threshold)


def threshold_metrics_at(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, thresholds: float | npt.ArrayLike
) -> dict[str, float]:
    """:func:`threshold_metrics` with one threshold per sample allowed."""
    c = confusion(y_true, np.asarray(scores) >= np.asarray(thresholds))
    precision = _ratio(c.tp, c.tp + c.fp)
    sensitivity = _ratio(c.tp, c.tp + c.fn)
    return {
        "accuracy": _ratio(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _ratio(c.tn, c.tn + c.fp),
        "f1": _ratio(2 * precision * sensitivity, precision + sensitivity),
    }


def binary_metrics(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float
) -> dict[str, float]:
    """All point metrics (AUC plus the threshold metrics)."""
    return {"auc": roc_auc(y_true, scores), **threshold_metrics(y_true, scores, threshold)}


def roc_points(
    y_true: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """False-positive rates, true-positive rates and the thresholds that produce them."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    n_pos = max(int(y.sum()), 1)
    n_neg = max(len(y) - int(y.sum()), 1)
    tpr = np.array([np.sum(y & (s >= t)) / n_pos for t in thresholds])
    fpr = np.array([np.sum(~y & (s >= t)) / n_neg for t in thresholds])
    return fpr, tpr, thresholds


def youden_threshold(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Operating point maximising sensitivity + specificity - 1 (Youden's J)."""
    fpr, tpr, thresholds = roc_points(y_true, scores)
    finite = np.isfinite(thresholds)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thresholds[int(np.argmax(j))])


def bootstrap_cis(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    statistics: Callable[[npt.NDArray[np.int64], FloatArray], Mapping[str, float]],
    *,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of several statistics from the same resamples.

    Resamples whole groups (patients) when given; a resample where a statistic is undefined
    (NaN) does not count for that statistic.
    """
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    labels = np.asarray(groups) if groups is not None else np.arange(len(y)).astype(str)
    unique, inverse = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    values: dict[str, list[float]] = {}
    for _ in range(n_boot):
        picked = rng.integers(0, len(unique), len(unique))
        idx = np.concatenate([members[g] for g in picked])
        for name, value in statistics(y[idx], s[idx]).items():
            found = values.setdefault(name, [])
            if not math.isnan(value):
                found.append(value)
    alpha = (1.0 - level) / 2
    out = {}
    for name, found in values.items():
        if not found:
            out[name] = (math.nan, math.nan)
            continue
        lo, hi = np.quantile(np.asarray(found), [alpha, 1.0 - alpha])
        out[name] = (float(lo), float(hi))
    return out


def bootstrap_ci(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    statistic: Statistic,
    *,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of one statistic (see :func:`bootstrap_cis`)."""
    cis = bootstrap_cis(
        y_true,
        scores,
        lambda y, s: {"value": statistic(y, s)},
        groups=groups,
        n_boot=n_boot,
        seed=seed,
        level=level,
    )
    return cis.get("value", (math.nan, math.nan))


def metrics_with_ci(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    threshold: float | npt.ArrayLike,
    *,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float | list[float]]]:
    """Every metric as ``{"value": v, "ci95": [lo, hi]}`` (patient bootstrap).

    ``threshold`` is one number or one per sample (e.g. each chosen inside the training folds
    of the fold that sample was tested in); the bootstrap resamples it with its sample.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), s.shape)
    paired = np.stack([s, t], axis=1)

    def stats(y: npt.NDArray[np.int64], st: FloatArray) -> dict[str, float]:
        return {
            "auc": roc_auc(y, st[:, 0]),
            **threshold_metrics_at(y, st[:, 0], st[:, 1]),
        }

    point = stats(np.asarray(y_true).astype(np.int64), paired)
    cis = bootstrap_cis(y_true, paired, stats, groups=groups, n_boot=n_boot, seed=seed)
    out: dict[str, dict[str, float | list[float]]] = {}
    for name in METRIC_NAMES:
        lo, hi = cis.get(name, (math.nan, math.nan))
        out[name] = {"value": point[name], "ci95": [lo, hi]}
    return out


def plot_roc(
    curves: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]], path: Path, title: str
) -> None:
    """Write ROC curves of several score sets into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_points(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(c: Confusion, class_names: Sequence[str], path: Path, title: str) -> None:
    """Write a confusion-matrix PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(c.as_matrix())
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        colour = "white" if v > matrix.max() / 2 else "black"
        ax.text(j, i, str(v), ha="center", va="center", color=colour)
    ax.set_xticks([0, 1], labels=list(class_names))
    ax.set_yticks([0, 1], labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
