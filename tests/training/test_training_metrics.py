"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cad_node.training import metrics as M

Y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
S = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05])


def test_threshold_metrics_by_hand() -> None:
    # at 0.5: predicted positive 0.9, 0.6, 0.7 -> TP 2, FP 1, FN 1, TN 4
    c = M.confusion(Y, S >= 0.5)
    assert (c.tp, c.fp, c.tn, c.fn) == (2, 1, 4, 1)
    assert c.as_matrix() == [[4, 1], [1, 2]]
    m = M.threshold_metrics(Y, S, 0.5)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 / 3)


def test_auc_by_hand_and_against_sklearn() -> None:
    # positive/negative pairs ranked correctly: 0.9 beats 5, 0.6 beats 4, 0.3 beats 3 -> 12/15
    assert M.roc_auc(Y, S) == pytest.approx(12 / 15)
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        s = np.round(rng.random(60), 1)  # ties on purpose
        assert M.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_degenerate_cases() -> None:
    assert math.isnan(M.roc_auc([1, 1], [0.2, 0.3]))
    m = M.threshold_metrics([0, 0], [0.1, 0.2], 0.5)
    assert m["precision"] == 0.0 and m["sensitivity"] == 0.0 and m["specificity"] == 1.0


def test_youden_threshold() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    assert M.youden_threshold(y, s) == pytest.approx(0.6)


def test_bootstrap_ci_contains_point_estimate() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    s = y * 0.3 + rng.random(120)
    groups = [f"p{i // 2}" for i in range(120)]
    for grouping in (None, groups):
        lo, hi = M.bootstrap_ci(y, s, M.roc_auc, groups=grouping, n_boot=300, seed=0)
        assert lo < M.roc_auc(y, s) < hi
        assert 0.0 <= lo < hi <= 1.0
    full = M.metrics_with_ci(y, s, 0.8, groups=groups, n_boot=200, seed=0)
    for name, entry in full.items():
        lo, hi = entry["ci95"]  # type: ignore[misc]
        assert lo <= entry["value"] <= hi, name  # type: ignore[operator]


def test_plots_are_written(tmp_path: object) -> None:
    from pathlib import Path

    out = Path(str(tmp_path))
    M.plot_roc({"a": (Y, S)}, out / "roc.png", "t")
    M.plot_confusion(M.confusion(Y, S >= 0.5), ("neg", "pos"), out / "cm.png", "t")
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "cm.png").stat().st_size > 1000
