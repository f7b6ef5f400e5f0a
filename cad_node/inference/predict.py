"""Analyse a study: scores per view, per breast and per exam, with heatmaps on source pixels.

Each breast is scored from its CC and MLO views (the mean of its view scores; a view with
several images takes their mean), the exam from its breasts (the maximum). A flag marks scores
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
    """Grad-CAM on the source pixel grid, [0, 1]."""


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
                }
                for i in self.images
            ],
            "missing_views": self.missing_views,
            "not_analysed": self.not_analysed,
            "errors": self.errors,
        }


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
        info = identify(ds)
        if not info.analysable or info.view is None:
            not_analysed.append(
                {"sop_instance_uid": info.sop_instance_uid, "reason": str(info.not_analysed_reason)}
            )
            continue
        try:
            display = pixels_from_dataset(ds)
            prepared.append(
                (
                    info.sop_instance_uid,
                    info.view,
                    display,
                    preprocess_dataset(ds, config, pixels=display),
                )
            )
        except CadNodeError as exc:
            errors.append({"sop_instance_uid": info.sop_instance_uid, "error": str(exc)})
            log.warning(
                "image %s of study %s not analysed: %s",
                info.sop_instance_uid,
                study_instance_uid,
                exc,
            )

    images: list[ImageResult] = []
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        batch = np.stack([p.image for _, _, _, p in chunk]).astype(np.float32)
        if heatmaps:
            scores, maps = model.scores_and_heatmaps(batch)
        else:
            scores, maps = model.scores(batch), None
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
                )
            )

    by_view: dict[str, list[float]] = defaultdict(list)
    for image in images:
        by_view[image.view].append(image.score)
    breasts: dict[str, BreastResult] = {}
    for lat in ("L", "R"):
        views = {v: float(np.mean(s)) for v, s in sorted(by_view.items()) if v.startswith(lat)}
        if views:
            score = float(np.mean(list(views.values())))
            breasts[lat] = BreastResult(lat, score, score >= model.threshold, views)
    _, missing = views_present_and_missing(by_view)
    return StudyAnalysis(
        study_instance_uid=study_instance_uid,
        images=images,
        breasts=breasts,
        missing_views=missing,
        errors=errors,
        not_analysed=not_analysed,
    )
