"""Analyse a study: scores per view, per breast and per exam, with heatmaps on source pixels.

Each breast is scored from its CC and MLO views (the mean of its view scores; a view with
several images takes their mean), the exam from its breasts (the maximum). A lesion model with
a breast combiner instead scores a breast from the mean logit of its views and the mean logit
of the other breast's views, as it was trained to. A flag marks scores
at or above the model's operating threshold. Images that cannot be analysed are named with the
reason; one bad image never stops the rest of the study.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from cad_node.assembly import identify, views_present_and_missing
from cad_node.errors import CadNodeError
from cad_node.inference.model import CadModel
from cad_node.inference.preprocess import (
    Preprocessed,
    heatmap_to_source,
    pixels_from_dataset,
    preprocess_dataset,
)
from cad_node.lesion_map import detections_from_map

log = logging.getLogger(__name__)

DECISION_SUPPORT = "Decision support for a radiologist, not a diagnosis."


@dataclass
class ImageResult:
    """One analysed image."""

    sop_instance_uid: str
    view: str
    score: float
    suspicious: bool
    display: npt.NDArray[np.float32] | None = field(default=None, repr=False)
    """The source image as displayed (grey, [0, 1]), for overlays."""
    heatmap: npt.NDArray[np.float32] | None = field(default=None, repr=False)
    """Lesion map (or Grad-CAM) on the source pixel grid, [0, 1]."""
    logit: float | None = None
    """The model's image logit (lesion models), which the breast score combines."""
    detections: list[dict[str, float]] = field(default_factory=list)
    """Local maxima of the lesion map: centre ``x``, ``y`` and ``radius`` in source pixels,
    ``score`` the map's probability there."""


@dataclass
class BreastResult:
    """Scores of one breast."""

    laterality: str
    score: float
    suspicious: bool
    views: dict[str, float]


@dataclass
class StudyAnalysis:
    """Everything the node reports about one study."""

    study_instance_uid: str
    images: list[ImageResult]
    breasts: dict[str, BreastResult]
    missing_views: list[str]
    errors: list[dict[str, str]]
    not_analysed: list[dict[str, str]]
    localised: bool = False
    """Whether the model localises (its images carry detections, possibly none)."""

    @property
    def exam_score(self) -> float | None:
        """The highest breast score, or None when no breast could be analysed."""
        return max((b.score for b in self.breasts.values()), default=None)

    @property
    def exam_suspicious(self) -> bool:
        return any(b.suspicious for b in self.breasts.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape scripts depend on (see ``cad-node predict --json``)."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "exam_score": self.exam_score,
            "exam_suspicious": self.exam_suspicious,
            "localised": self.localised,
            "breasts": {
                lat: {
                    "score": b.score,
                    "suspicious": b.suspicious,
                    "views": b.views,
                }
                for lat, b in sorted(self.breasts.items())
            },
            "images": [
                {
                    "sop_instance_uid": i.sop_instance_uid,
                    "view": i.view,
                    "score": i.score,
                    "suspicious": i.suspicious,
                    "detections": i.detections,
                }
                for i in self.images
            ],
            "missing_views": self.missing_views,
            "not_analysed": self.not_analysed,
            "errors": self.errors,
        }


def _detections_in_source(
    prob: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], model: CadModel, pre: Preprocessed
) -> list[dict[str, float]]:
    """The lesion map's local maxima at or above the model's detection threshold, mapped to
    source pixels (x = column)."""
    out = []
    scale = float(np.mean(pre.record.scale))
    floor = model.detection_threshold
    for d in detections_from_map(prob, mask, min_score=floor, stride=model.map_stride):
        row, col = pre.record.model_to_source(d.row, d.col)
        out.append(
            {
                "x": round(col, 1),
                "y": round(row, 1),
                "radius": round(d.radius / scale, 1),
                "score": round(d.score, 4),
            }
        )
    return out


def image_problem(exc: BaseException) -> str:
    """What went wrong with one image, fit for logs and results: never an element's value.

    The node's own errors carry no patient data; other exceptions (pydicom's, numpy's) may
    quote values, so only their type is kept.
    """
    if isinstance(exc, CadNodeError):
        return str(exc)
    return f"image cannot be read or prepared ({type(exc).__name__})"


def analyse_study(
    study_instance_uid: str,
    datasets: Sequence[Dataset],
    model: CadModel,
    *,
    heatmaps: bool = True,
    batch_size: int = 4,
) -> StudyAnalysis:
    """Score every analysable image of one study and aggregate per breast and exam."""
    config = model.preprocess_config
    prepared: list[tuple[str, str, npt.NDArray[np.float32], Preprocessed]] = []
    errors: list[dict[str, str]] = []
    not_analysed: list[dict[str, str]] = []
    for ds in datasets:
        sop_uid = str(ds.get("SOPInstanceUID", "?"))
        try:
            info = identify(ds)
            if not info.analysable or info.view is None:
                reason = str(info.not_analysed_reason)
                not_analysed.append({"sop_instance_uid": sop_uid, "reason": reason})
                continue
            display = pixels_from_dataset(ds)
            pre = preprocess_dataset(ds, config, pixels=display)
            prepared.append((sop_uid, info.view, display, pre))
        except MemoryError:
            raise  # the machine's trouble, not the image's: the job is retried
        except Exception as exc:  # one bad image never stops the rest of the study
            problem = image_problem(exc)
            errors.append({"sop_instance_uid": sop_uid, "error": problem})
            log.warning(
                "image %s of study %s not analysed: %s", sop_uid, study_instance_uid, problem
            )

    images: list[ImageResult] = []
    combiner = model.combiner
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        batch = np.stack([p.image for _, _, _, p in chunk]).astype(np.float32)
        logits: npt.NDArray[np.float32] | None = None
        found: list[list[dict[str, float]]] = [[] for _ in chunk]
        maps: npt.NDArray[np.float32] | None = None
        if model.has_lesion_map:
            logits, prob, mask = model.lesion_maps(batch)
            found = [
                _detections_in_source(prob[k], mask[k], model, pre)
                for k, (_, _, _, pre) in enumerate(chunk)
            ]
            if combiner is not None:
                scores = combiner.probability(logits, None).astype(np.float32)
            else:
                scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
            if heatmaps:
                maps = model.map_on_model_grid(prob, (batch.shape[2], batch.shape[3]))
        elif heatmaps:
            scores, maps = model.scores_and_heatmaps(batch)
        else:
            scores = model.scores(batch)
        for k, (sop, view, display, pre) in enumerate(chunk):
            score = float(scores[k])
            images.append(
                ImageResult(
                    sop_instance_uid=sop,
                    view=view,
                    score=score,
                    suspicious=score >= model.threshold,
                    display=display if heatmaps else None,
                    heatmap=heatmap_to_source(maps[k], pre.record) if maps is not None else None,
                    logit=None if logits is None else float(logits[k]),
                    detections=found[k],
                )
            )

    by_view: dict[str, list[float]] = defaultdict(list)
    for image in images:
        by_view[image.view].append(image.score)
    breasts: dict[str, BreastResult] = {}
    breast_logit = {
        lat: float(np.mean(ls))
        for lat in ("L", "R")
        if (ls := [i.logit for i in images if i.view.startswith(lat) and i.logit is not None])
    }
    for lat in ("L", "R"):
        views = {v: float(np.mean(s)) for v, s in sorted(by_view.items()) if v.startswith(lat)}
        if views:
            score = float(np.mean(list(views.values())))
            if combiner is not None and lat in breast_logit:
                other = breast_logit.get("R" if lat == "L" else "L", float("nan"))
                score = float(combiner.probability(breast_logit[lat], other))
            breasts[lat] = BreastResult(lat, score, score >= model.threshold, views)
    _, missing = views_present_and_missing(by_view)
    return StudyAnalysis(
        study_instance_uid=study_instance_uid,
        images=images,
        breasts=breasts,
        missing_views=missing,
        errors=errors,
        not_analysed=not_analysed,
        localised=model.has_lesion_map,
    )
