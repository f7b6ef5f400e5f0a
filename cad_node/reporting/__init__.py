"""Reporting: an analysis becomes DICOM result objects (pure; no network, no database).

``build_result_objects`` returns, for one analysed study:

1. a Mammography CAD SR (TID 4000), the form mammography workstations read;
2. a Comprehensive 3D SR with a TID 1500 Measurement Report, the form of IHE AI Results/OHIF
   (when at least one breast was analysed);
3. one heatmap Secondary Capture per analysed image (when the analysis carries heatmaps).

All are built with highdicom, filed in the analysed study, each kind in a new series, name the
algorithm in Contributing Equipment, say they are decision support and not a diagnosis, and
reference every analysed source instance. Content is the same for the same input except
UIDs, dates and times.

When the algorithm localises (``Algorithm.localises``, from the model's lesion map), each
detection of an image is reported in all three: a TID 4006 Single Image Finding with its
centre and circle in the CAD SR (Summary of Detections "Succeeded"), a TID 1410 Planar ROI
group in the TID 1500 SR, and a circle with its score on the heatmap. Otherwise the CAD SR
says detection was Not Attempted, and detections in the analysis are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from pydicom.dataset import Dataset

from cad_node.domain import HEATMAP_SC, MAMMO_CAD_SR, TID1500_SR
from cad_node.reporting.common import Algorithm, DocumentRef, ReportingError, match_sources
from cad_node.reporting.heatmap_sc import build_heatmap_scs
from cad_node.reporting.mammo_cad_sr import MammographyCadSR, build_mammo_cad_sr
from cad_node.reporting.tid1500_sr import build_measurement_report_sr
from cad_node.results import StudyAnalysis

__all__ = [
    "HEATMAP_SC",
    "MAMMO_CAD_SR",
    "TID1500_SR",
    "Algorithm",
    "DocumentRef",
    "MammographyCadSR",
    "ReportObject",
    "ReportingError",
    "build_result_objects",
]


class ReportObject(NamedTuple):
    """One result object and its kind (``mammo-cad-sr``, ``tid1500-sr`` or ``heatmap-sc``)."""

    kind: str
    dataset: Dataset


def build_result_objects(
    analysis: StudyAnalysis,
    sources: Sequence[Dataset],
    algorithm: Algorithm,
    *,
    previous: Sequence[Dataset | DocumentRef] = (),
    heatmaps: bool = True,
) -> list[ReportObject]:
    """``[Mammography CAD SR, TID 1500 SR, heatmap SC per image...]`` for one analysis.

    When no image could be analysed only the Mammography CAD SR is made: it says that the
    analysis failed, and there is nothing to measure.

    ``sources`` are the analysed datasets (headers suffice unless heatmaps are wanted; the
    heatmap pixels come from the analysis). Results are filed under
    ``analysis.study_instance_uid``, which must be the study of one of the sources.
    ``previous`` are the objects sent for an earlier analysis of the study (datasets or
    their UIDs): each new SR lists the earlier SR of its own SOP class in Predecessor
    Documents Sequence; earlier images are ignored. With ``heatmaps`` the analysis must carry
    display and heatmap arrays for every image.

    Raises:
        ReportingError: an analysed image has no source, no source is in the analysed study,
            or heatmaps are wanted but missing.
    """
    inputs = match_sources(analysis, sources)
    objects = [ReportObject(MAMMO_CAD_SR, build_mammo_cad_sr(inputs, algorithm, previous=previous))]
    if analysis.breasts:  # TID 1500 needs at least one measurement group
        report = build_measurement_report_sr(inputs, algorithm, previous=previous)
        objects.append(ReportObject(TID1500_SR, report))
    if heatmaps:
        objects += [ReportObject(HEATMAP_SC, sc) for sc in build_heatmap_scs(inputs, algorithm)]
    return objects
