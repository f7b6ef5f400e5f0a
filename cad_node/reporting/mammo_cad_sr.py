"""Mammography CAD SR (TID 4000) of one analysis.

highdicom ships no TID 4000 class, so the content tree is built from highdicom content items
and wrapped in :class:`MammographyCadSR`, a highdicom SR SOP class for
1.2.840.10008.5.1.4.1.1.88.50. Only value types and relationships allowed by PS3.3 Table
A.35.5-2 are used. The tree::

    CONTAINER Mammography CAD Report (TID 4000)
      HAS CONCEPT MOD  Language (TID 1204)
      HAS OBS CONTEXT  device observer: the algorithm (TID 1002/1004)
      CONTAINS CONTAINER Image Library
        CONTAINS IMAGE  each analysed image (TID 4020: laterality, view, orientation, dates)
      CONTAINS CODE CAD Processing and Findings Summary (TID 4001, CID 6047)
        INFERRED FROM CONTAINER Individual Impression/Recommendation, per breast (TID 4003)
          HAS CONCEPT MOD  Rendering Intent: required when suspicious, else optional
          CONTAINS CODE    Finding Site = Breast, HAS CONCEPT MOD Laterality
          CONTAINS NUM     Probability of cancer (breast score)
            HAS PROPERTIES  Algorithm Name/Version/Parameters (TID 4019)
            INFERRED FROM   NUM Probability of cancer per image, INFERRED FROM its IMAGE
          CONTAINS CODE    Suspicious at the operating threshold (99CADNODE) = Yes/No
          CONTAINS TEXT    Impression Description, with the decision-support statement
          CONTAINS CODE    Single Image Finding = Selected region, per detection (TID 4006)
            HAS CONCEPT MOD  Rendering Intent: required when the breast is suspicious,
                             else optional
            HAS PROPERTIES   Algorithm Name/Version/Parameters (TID 4019)
            HAS PROPERTIES   NUM Certainty of Finding, the detection score in percent
            HAS PROPERTIES   SCOORD Center (POINT) and Outline (CIRCLE) (TID 4021),
                             each SELECTED FROM its IMAGE
      CONTAINS CODE Summary of Detections (CID 6042): Not Attempted unless the model localises
        INFERRED FROM CONTAINER Successful Detections / Failed Detections (TID 4015)
          CONTAINS CODE Detection Performed (TID 4017), HAS PROPERTIES algorithm, images
      CONTAINS CODE Summary of Analyses (CID 6042)
        INFERRED FROM CONTAINER Successful Analyses / Failed Analyses (TID 4016)
          CONTAINS CODE Analysis Performed (TID 4018), HAS PROPERTIES algorithm, images
      CONTAINS TEXT Comment: decision support, not a diagnosis; views missing or not analysed

Graphic Data is in the source image's pixels, column\\row, with the centre of the top left
pixel at 0.5\\0.5 (PS3.3 C.18.6.1.2); findings come as array indices, so half a pixel is
added (:func:`~cad_node.reporting.common.graphic_centre`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
from highdicom.sr import (
    CodeContentItem,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DateContentItem,
    GraphicTypeValues,
    ImageContentItem,
    LanguageOfContentItemAndDescendants,
    NumContentItem,
    RelationshipTypeValues,
    ScoordContentItem,
    TextContentItem,
    TimeContentItem,
)
from highdicom.sr.sop import _SR
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, MammographyCADSRStorage

from cad_node.domain import Laterality
from cad_node.reporting import codes
from cad_node.reporting.common import (
    BREAST_NAME,
    MAMMOGRAPHY_CAD_SR_SERIES,
    Algorithm,
    AnalysedImage,
    DocumentRef,
    Inputs,
    graphic_centre,
    graphic_edge,
    patient_orientation,
    score_text,
    score_value,
    sr_document_arguments,
)
from cad_node.results import DECISION_SUPPORT, Finding

CONTAINS: Final = RelationshipTypeValues.CONTAINS
HAS_PROPERTIES: Final = RelationshipTypeValues.HAS_PROPERTIES
HAS_CONCEPT_MOD: Final = RelationshipTypeValues.HAS_CONCEPT_MOD
HAS_ACQ_CONTEXT: Final = RelationshipTypeValues.HAS_ACQ_CONTEXT
INFERRED_FROM: Final = RelationshipTypeValues.INFERRED_FROM
SELECTED_FROM: Final = RelationshipTypeValues.SELECTED_FROM


class MammographyCadSR(_SR):
    """Mammography CAD SR SOP instance, built like highdicom's own SR SOP classes."""

    def __init__(
        self,
        evidence: Sequence[Dataset],
        content: Dataset,
        series_instance_uid: str,
        series_number: int,
        sop_instance_uid: str,
        instance_number: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            evidence=evidence,
            content=content,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=MammographyCADSRStorage,
            instance_number=instance_number,
            **kwargs,
        )


def _with(item: ContentItem, children: Iterable[ContentItem]) -> ContentItem:
    """Give a content item its children (highdicom items take them as Content Sequence)."""
    items = list(children)
    if items:
        item.ContentSequence = ContentSequence(items)
    return item


def _algorithm_items(algorithm: Algorithm) -> list[ContentItem]:
    """TID 4019 as HAS PROPERTIES children (highdicom's class fixes HAS CONCEPT MOD)."""
    items: list[ContentItem] = [
        TextContentItem(codes.ALGORITHM_NAME, algorithm.name, HAS_PROPERTIES),
        TextContentItem(codes.ALGORITHM_VERSION, algorithm.version, HAS_PROPERTIES),
    ]
    items += [
        TextContentItem(codes.ALGORITHM_PARAMETERS, p, HAS_PROPERTIES) for p in algorithm.parameters
    ]
    items.append(
        TextContentItem(codes.ALGORITHM_MANUFACTURER, algorithm.manufacturer, HAS_PROPERTIES)
    )
    return items


def _image(ds: Dataset, name: Code, relationship: RelationshipTypeValues) -> ContentItem:
    return ImageContentItem(
        name=name,
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        relationship_type=relationship,
    )


def _library_entry(image: AnalysedImage) -> ContentItem:
    """TID 4020 CAD Image Library Entry."""
    ds = image.source
    descriptors: list[ContentItem] = [
        CodeContentItem(
            codes.IMAGE_LATERALITY, codes.SIDE_OF_BREAST[image.laterality], HAS_ACQ_CONTEXT
        ),
        CodeContentItem(codes.IMAGE_VIEW, codes.VIEW_CODE[image.position], HAS_ACQ_CONTEXT),
    ]
    orientation = patient_orientation(ds)
    if orientation is not None:
        descriptors += [
            TextContentItem(codes.PATIENT_ORIENTATION_ROW, orientation[0], HAS_ACQ_CONTEXT),
            TextContentItem(codes.PATIENT_ORIENTATION_COLUMN, orientation[1], HAS_ACQ_CONTEXT),
        ]
    for keyword, concept, kind in (
        ("StudyDate", codes.STUDY_DATE, DateContentItem),
        ("StudyTime", codes.STUDY_TIME, TimeContentItem),
        ("ContentDate", codes.CONTENT_DATE, DateContentItem),
        ("ContentTime", codes.CONTENT_TIME, TimeContentItem),
    ):
        value = ds.get(keyword)
        if value:
            descriptors.append(kind(concept, value, HAS_ACQ_CONTEXT))
    return _with(_image(ds, codes.SOURCE, CONTAINS), descriptors)


def _geometry(image: AnalysedImage, detection: Finding) -> list[ContentItem]:
    """TID 4021: Center as a POINT and Outline as a CIRCLE, each SELECTED FROM its image."""
    centre = graphic_centre(detection)
    edge = graphic_edge(detection, int(image.source.Columns))
    shapes = (
        (codes.CENTER, GraphicTypeValues.POINT, [centre]),
        (codes.OUTLINE, GraphicTypeValues.CIRCLE, [centre, edge]),
    )
    return [
        _with(
            ScoordContentItem(
                concept, kind, np.array(points, dtype=np.float32), relationship_type=HAS_PROPERTIES
            ),
            [_image(image.source, codes.SOURCE, SELECTED_FROM)],
        )
        for concept, kind, points in shapes
    ]


def finding_required(breast_suspicious: bool) -> bool:
    """A mark is for presentation when its breast is suspicious; other marks are optional, so
    a viewer may hide them. (Every reported detection already reached the model's detection
    threshold; its map score is not on the scale of the breast's operating threshold.)"""
    return breast_suspicious


def _finding(
    image: AnalysedImage, detection: Finding, breast_suspicious: bool, algorithm: Algorithm
) -> ContentItem:
    """TID 4006 Single Image Finding of one detection."""
    required = finding_required(breast_suspicious)
    intent = codes.PRESENTATION_REQUIRED if required else codes.PRESENTATION_OPTIONAL
    certainty = NumContentItem(
        codes.CERTAINTY_OF_FINDING,
        round(detection.score * 100.0, 2),
        codes.PERCENT,
        relationship_type=HAS_PROPERTIES,
    )
    return _with(
        CodeContentItem(codes.SINGLE_IMAGE_FINDING, codes.DETECTION_FINDING, CONTAINS),
        [
            CodeContentItem(codes.RENDERING_INTENT, intent, HAS_CONCEPT_MOD),
            *_algorithm_items(algorithm),
            certainty,
            *_geometry(image, detection),
        ],
    )


def _impression(inputs: Inputs, laterality: Laterality, algorithm: Algorithm) -> ContentItem:
    """TID 4003 Individual Impression/Recommendation for one breast."""
    breast = inputs.analysis.breasts[laterality.value]
    per_image = [
        _with(
            NumContentItem(
                codes.PROBABILITY_OF_CANCER,
                score_value(image.result.score),
                codes.NO_UNITS,
                relationship_type=INFERRED_FROM,
            ),
            [
                CodeContentItem(codes.IMAGE_VIEW, codes.VIEW_CODE[image.position], HAS_CONCEPT_MOD),
                _image(image.source, codes.SOURCE, INFERRED_FROM),
            ],
        )
        for image in inputs.breast_images(laterality)
    ]
    score = _with(
        NumContentItem(
            codes.PROBABILITY_OF_CANCER,
            score_value(breast.score),
            codes.NO_UNITS,
            relationship_type=CONTAINS,
        ),
        [*_algorithm_items(algorithm), *per_image],
    )
    site = _with(
        CodeContentItem(codes.FINDING_SITE, codes.BREAST, CONTAINS),
        [CodeContentItem(codes.LATERALITY, codes.LATERALITY_CODE[laterality], HAS_CONCEPT_MOD)],
    )
    flag = CodeContentItem(codes.SUSPICIOUS, codes.YES if breast.suspicious else codes.NO, CONTAINS)
    findings = [
        _finding(image, detection, breast.suspicious, algorithm)
        for image in inputs.breast_images(laterality)
        for detection in (image.findings if algorithm.localises else [])
    ]
    verdict = "at or above" if breast.suspicious else "below"
    marks = f" Localised findings: {len(findings)}." if algorithm.localises else ""
    description = TextContentItem(
        codes.IMPRESSION_DESCRIPTION,
        f"{BREAST_NAME[laterality]}: score {score_text(breast.score)}, {verdict} the operating "
        f"threshold {algorithm.threshold:g} of {algorithm.label}.{marks} {DECISION_SUPPORT}",
        CONTAINS,
    )
    intent = codes.PRESENTATION_REQUIRED if breast.suspicious else codes.PRESENTATION_OPTIONAL
    container = ContainerContentItem(
        codes.INDIVIDUAL_IMPRESSION_RECOMMENDATION,
        is_content_continuous=False,
        relationship_type=INFERRED_FROM,
    )
    return _with(
        container,
        [
            CodeContentItem(codes.RENDERING_INTENT, intent, HAS_CONCEPT_MOD),
            site,
            score,
            flag,
            description,
            *findings,
        ],
    )


def _summary_code(inputs: Inputs) -> Code:
    analysis = inputs.analysis
    if not analysis.images:
        return codes.NONE_SUCCEEDED
    findings = analysis.exam_suspicious
    if analysis.errors:
        return (
            codes.NOT_ALL_SUCCEEDED_WITH_FINDINGS
            if findings
            else codes.NOT_ALL_SUCCEEDED_WITHOUT_FINDINGS
        )
    return codes.ALL_SUCCEEDED_WITH_FINDINGS if findings else codes.ALL_SUCCEEDED_WITHOUT_FINDINGS


def _status(inputs: Inputs) -> Code:
    """CID 6042 status of an algorithm run over the study's images."""
    if inputs.images and inputs.failed:
        return codes.PARTIALLY_SUCCEEDED
    return codes.SUCCEEDED if inputs.images else codes.FAILED


def _performed(
    inputs: Inputs,
    algorithm: Algorithm,
    summary: Code,
    containers: tuple[Code, Code],
    performed: Code,
    value: Code,
) -> ContentItem:
    """Summary of Detections or of Analyses with its TID 4015/4016 Successful and Failed
    groups, each holding one TID 4017/4018 run: the algorithm and its images."""
    groups: list[ContentItem] = []
    for concept, datasets in zip(
        containers, ([i.source for i in inputs.images], inputs.failed), strict=True
    ):
        if not datasets:
            continue
        run = _with(
            CodeContentItem(performed, value, CONTAINS),
            [
                *_algorithm_items(algorithm),
                *[_image(ds, codes.SOURCE, HAS_PROPERTIES) for ds in datasets],
            ],
        )
        container = ContainerContentItem(concept, relationship_type=INFERRED_FROM)
        groups.append(_with(container, [run]))
    return _with(CodeContentItem(summary, _status(inputs), CONTAINS), groups)


def _analyses(inputs: Inputs, algorithm: Algorithm) -> ContentItem:
    """Summary of Analyses (TID 4016/4018)."""
    return _performed(
        inputs,
        algorithm,
        codes.SUMMARY_OF_ANALYSES,
        (codes.SUCCESSFUL_ANALYSES, codes.FAILED_ANALYSES),
        codes.ANALYSIS_PERFORMED,
        codes.INDIVIDUAL_IMPRESSION_ANALYSIS,
    )


def _detections(inputs: Inputs, algorithm: Algorithm) -> ContentItem:
    """Summary of Detections (TID 4015/4017); Not Attempted when the model does not localise."""
    if not algorithm.localises:
        return CodeContentItem(codes.SUMMARY_OF_DETECTIONS, codes.NOT_ATTEMPTED, CONTAINS)
    return _performed(
        inputs,
        algorithm,
        codes.SUMMARY_OF_DETECTIONS,
        (codes.SUCCESSFUL_DETECTIONS, codes.FAILED_DETECTIONS),
        codes.DETECTION_PERFORMED,
        codes.DETECTION_FINDING,
    )


def _comment(inputs: Inputs, algorithm: Algorithm) -> str:
    analysis = inputs.analysis
    parts = [
        f"Computer-aided analysis by {algorithm.label}. {DECISION_SUPPORT}"
        f"{algorithm.caveat_sentence}"
    ]
    if analysis.missing_views:
        parts.append(f"Views missing: {', '.join(analysis.missing_views)}.")
    if analysis.not_analysed:
        parts.append(f"Images not analysed: {len(analysis.not_analysed)}.")
    if analysis.errors:
        parts.append(f"Images that failed analysis: {len(analysis.errors)}.")
    return " ".join(parts)


def content_tree(inputs: Inputs, algorithm: Algorithm) -> ContainerContentItem:
    """The TID 4000 root container of an analysis (see the module docstring)."""
    inputs.check_localisation(algorithm)
    root = ContainerContentItem(
        codes.MAMMOGRAPHY_CAD_REPORT, is_content_continuous=False, template_id="4000"
    )
    children: list[ContentItem] = [
        *LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE),
        *algorithm.observation_context(),
    ]
    if inputs.images:
        library = ContainerContentItem(
            codes.IMAGE_LIBRARY, is_content_continuous=False, relationship_type=CONTAINS
        )
        children.append(_with(library, [_library_entry(i) for i in inputs.images]))
    impressions = [
        _impression(inputs, lat, algorithm)
        for lat in Laterality
        if lat.value in inputs.analysis.breasts
    ]
    children += [
        _with(
            CodeContentItem(
                codes.CAD_PROCESSING_AND_FINDINGS_SUMMARY, _summary_code(inputs), CONTAINS
            ),
            impressions,
        ),
        _detections(inputs, algorithm),
        _analyses(inputs, algorithm),
        TextContentItem(codes.COMMENT, _comment(inputs, algorithm), CONTAINS),
    ]
    _with(root, children)
    return root


def build_mammo_cad_sr(
    inputs: Inputs,
    algorithm: Algorithm,
    *,
    previous: Iterable[Dataset | DocumentRef] = (),
    series_instance_uid: UID | None = None,
    sop_instance_uid: UID | None = None,
) -> MammographyCadSR:
    """The Mammography CAD SR of an analysis, filed in the analysed study."""
    return MammographyCadSR(
        content=content_tree(inputs, algorithm),
        **sr_document_arguments(
            inputs,
            algorithm,
            sop_class_uid=MammographyCADSRStorage,
            series_number=MAMMOGRAPHY_CAD_SR_SERIES,
            series_description="AI CAD report ({label}) - not a diagnosis",
            previous=previous,
            series_instance_uid=series_instance_uid,
            sop_instance_uid=sop_instance_uid,
        ),
    )
