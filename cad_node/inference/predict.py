"""Analyse a study: scores per view, per breast and per exam, with heatmaps on source pixels.

Each breast is scored from its CC and MLO views (the mean of its view scores; a view with
several images takes their mean), the exam from its breasts (the maximum). A lesion model with
a breast combiner instead scores a breast from the mean logit of its views and the mean logit
of the other breast's views, as it was trained to. A flag marks scores
at or above the model's operating threshold. Images that cannot be analysed are named with the
reason; one bad image never stops the rest of the study. The results are plain values
(:mod:`cad_node.results`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

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
from cad_node.results import (
    BreastResult,
    Finding,
    ImageFailure,
    ImageResult,
    NotAnalysed,
    StudyAnalysis,
)

log = logging.getLogger(__name__)


def findings_in_source(
    prob: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], model: CadModel, pre: Preprocessed
) -> list[Finding]:
    """The lesion map's local maxima at or above the model's detection threshold, mapped to
    source pixels (x = column)."""
    out = []
    scale = float(np.mean(pre.record.scale))
    floor = model.detection_threshold
    for d in detections_from_map(prob, mask, min_score=floor, stride=model.map_stride):
        row, col = pre.record.model_to_source(d.row, d.col)
        out.append(
            Finding(
                x=round(col, 1),
                y=round(row, 1),
                radius=round(d.radius / scale, 1),
                score=round(d.score, 4),
            )
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
    errors: list[ImageFailure] = []
    not_analysed: list[NotAnalysed] = []
    for ds in datasets:
        sop_uid = str(ds.get("SOPInstanceUID", "?"))
        try:
            info = identify(ds)
            if not info.analysable or info.view is None:
                reason = str(info.not_analysed_reason)
                not_analysed.append(NotAnalysed(sop_uid, reason))
                continue
            display = pixels_from_dataset(ds)
            pre = preprocess_dataset(ds, config, pixels=display)
            prepared.append((sop_uid, info.view, display, pre))
        except MemoryError:
            raise  # the machine's trouble, not the image's: the job is retried
        except Exception as exc:  # one bad image never stops the rest of the study
            problem = image_problem(exc)
            errors.append(ImageFailure(sop_uid, problem))
            log.warning(
                "image %s of study %s not analysed: %s", sop_uid, study_instance_uid, problem
            )

    images: list[ImageResult] = []
    combiner = model.combiner
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        batch = np.stack([p.image for _, _, _, p in chunk]).astype(np.float32)
        logits: npt.NDArray[np.float32] | None = None
        found: list[list[Finding]] = [[] for _ in chunk]
        maps: npt.NDArray[np.float32] | None = None
        if model.has_lesion_map:
            logits, prob, mask = model.lesion_maps(batch)
            found = [
                findings_in_source(prob[k], mask[k], model, pre)
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
                    findings=found[k],
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
