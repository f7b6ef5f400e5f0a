"""Evaluate an exported model folder on a labelled data set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from cad_node.model_folder import load_model_folder, read_manifest
from cad_node.training import datasets as dsets
from cad_node.training import metrics as M
from cad_node.training.export import predict_proba

log = logging.getLogger(__name__)


def _lesion_scores(
    model_dir: Path,
    samples: list[dsets.Sample],
    task: dsets.Task,
    lesions_csv: Path | None,
    progress: bool,
) -> tuple[npt.NDArray[np.float64], dict[str, Any] | None]:
    """Breast probabilities of a lesion model (with each film's other breast, as it was
    trained) and, given a lesions CSV, the FROC of its detections."""
    from cad_node.inference.model import load_cad_model
    from cad_node.training.lesion import froc, other_breast, task_lesions

    model = load_cad_model(model_dir, device="cpu")
    config = model.preprocess_config
    logits = np.zeros(len(samples))
    maps, masks = [], []
    for i, sample in enumerate(tqdm(samples, desc="evaluate", unit="img", disable=not progress)):
        image = dsets.preprocess_sample(sample, config.spacing_mm, config.size).image
        logit, prob, mask = model.lesion_maps(np.asarray(image, np.float32)[None])
        logits[i] = float(logit[0])
        maps.append(prob[0])
        masks.append(mask[0])
    pair = other_breast(samples)
    other = np.array([logits[j] if j >= 0 else np.nan for j in pair])
    combiner = model.combiner
    scores = (
        combiner.probability(logits, other)
        if combiner is not None
        else 1.0 / (1.0 + np.exp(-logits))
    )
    if lesions_csv is None:
        return scores, None
    height = int(dsets.read_pixels(samples[0]).shape[0]) if samples[0].kind == "png" else 1024
    lesions = dsets.load_mias_lesions(lesions_csv, size=height)
    points = dsets.lesion_points(samples, lesions, config.spacing_mm, config.size)
    result = froc(maps, masks, [task_lesions(p, task) for p in points])
    counts = dsets.mias_finding_counts(lesions_csv)
    ids = {s.sample_id for s in samples}
    centred = sum(1 for les in lesions if les.refnum in ids)
    result["n_findings_without_centre"] = sum(counts.get(i, 0) for i in ids) - centred
    return scores, result


def evaluate_model_folder(
    model_dir: Path | None,
    labels_csv: Path,
    *,
    images_root: Path | None = None,
    task: dsets.Task = "malignant",
    layout: dsets.Layout = "auto",
    threshold: float | None = None,
    lesions_csv: Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of a model folder (default: the installed default model) at its manifest
    threshold (or ``threshold``), with AUC CI; ``lesions_csv`` adds a FROC for lesion models."""
    from cad_node.model_folder import default_model_path

    model_dir = model_dir or default_model_path()
    manifest = read_manifest(model_dir)
    if manifest.task not in (None, task):
        log.warning("model was trained for task %r, evaluated on %r", manifest.task, task)
    samples = dsets.load_samples(labels_csv, images_root, layout)
    y = dsets.targets(samples, task)
    froc_result = None
    if manifest.localises:
        scores, froc_result = _lesion_scores(model_dir, samples, task, lesions_csv, progress)
    else:
        if lesions_csv is not None:
            log.warning("%s gives no detections: no FROC", manifest.name)
        model, manifest = load_model_folder(model_dir)
        images = dsets.preprocess_samples(
            samples,
            manifest.input.spacing_mm,
            manifest.input.size,
            progress=progress,
        )
        scores = predict_proba(model, torch.from_numpy(images)).numpy().astype(np.float64)
    cut = manifest.threshold if threshold is None else threshold
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
        "model": f"{manifest.name} {manifest.version}",
        **({"froc": froc_result} if froc_result is not None else {}),
    }


def _finite(value: float) -> float | None:
    """NaN (e.g. AUC with one class only) becomes None so the JSON stays valid."""
    return None if np.isnan(value) else float(value)
