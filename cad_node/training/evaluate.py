"""Evaluate an exported model folder on a labelled data set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cad_node.training import datasets as dsets
from cad_node.training import metrics as M
from cad_node.training.export import load_model_folder, predict_proba

log = logging.getLogger(__name__)


def evaluate_model_folder(
    model_dir: Path,
    labels_csv: Path,
    *,
    images_root: Path | None = None,
    task: dsets.Task = "malignant",
    layout: dsets.Layout = "auto",
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of a model folder at its manifest threshold (or ``threshold``), with AUC CI."""
    model, manifest = load_model_folder(model_dir)
    if manifest.get("task") not in (None, task):
        log.warning("model was trained for task %r, evaluated on %r", manifest.get("task"), task)
    samples = dsets.load_samples(labels_csv, images_root, layout)
    size = manifest["input"]["size"]
    images = dsets.preprocess_samples(
        samples,
        float(manifest["input"]["spacing_mm"]),
        (int(size[0]), int(size[1])),
        progress=progress,
    )
    y = dsets.targets(samples, task)
    scores = predict_proba(model, torch.from_numpy(images)).numpy().astype(np.float64)
    cut = float(manifest["threshold"]) if threshold is None else threshold
    point = M.binary_metrics(y, scores, cut)
    groups = [s.patient_id for s in samples]
    auc_ci = M.bootstrap_ci(y, scores, M.roc_auc, groups=groups, n_boot=n_boot, seed=seed)
    return {
        "n": len(samples),
        "auc": _finite(point["auc"]),
        "auc_ci95": [_finite(auc_ci[0]), _finite(auc_ci[1])],
        "accuracy": point["accuracy"],
        "sensitivity": point["sensitivity"],
        "specificity": point["specificity"],
        "precision": point["precision"],
        "f1": point["f1"],
        "threshold": cut,
        "n_positive": int(y.sum()),
        "task": task,
        "model": f"{manifest['name']} {manifest['version']}",
    }


def _finite(value: float) -> float | None:
    """NaN (e.g. AUC with one class only) becomes None so the JSON stays valid."""
    return None if np.isnan(value) else float(value)
