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
      CONTAINS CODE Summary of Detections = Not Attempted (the model does not localise)
      CONTAINS CODE Summary of Analyses (CID 6042)
        INFERRED FROM CONTAINER Successful Analyses / Failed Analyses (TID 4016)
          CONTAINS CODE Analysis Performed (TID 4018), HAS PROPERTIES algorithm, images
      CONTAINS TEXT Comment: decision support, not a diagnosis; views missing or not analysed
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from highdicom.sr import (
    CodeContentItem,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DateContentItem,
    ImageContentItem,
    LanguageOfContentItemAndDescendants,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
    TimeContentItem,
)
from highdicom.sr.sop import _SR
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, MammographyCADSRStorage

from cad_node.domain import Laterality
from cad_node.inference.predict import DECISION_SUPPORT
from cad_node.reporting import codes
from cad_node.reporting.common import (
    BREAST_NAME,
    MAMMOGRAPHY_CAD_SR_SERIES,
    Algorithm,
    AnalysedImage,
    DocumentRef,
    Inputs,
    patient_orientation,
    score_text,
    score_value,
    sr_document_arguments,
)

CONTAINS: Final = RelationshipTypeValues.CONTAINS
HAS_PROPERTIES: Final = RelationshipTypeValues.HAS_PROPERTIES
HAS_CONCEPT_MOD: Final = RelationshipTypeValues.HAS_CONCEPT_MOD
HAS_ACQ_CONTEXT: Final = RelationshipTypeValues.HAS_ACQ_CONTEXT
INFERRED_FROM: Final = RelationshipTypeValues.INFERRED_FROM


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
    verdict = "at or above" if breast.suspicious else "below"
    description = TextContentItem(
        codes.IMPRESSION_DESCRIPTION,
        f"{BREAST_NAME[laterality]}: score {score_text(breast.score)}, {verdict} the operating "
        f"threshold {algorithm.threshold:g} of {algorithm.label}. {DECISION_SUPPORT}",
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


def _analyses(inputs: Inputs, algorithm: Algorithm) -> ContentItem:
    """Summary of Analyses with TID 4016 Successful / Failed Analyses."""
    groups: list[ContentItem] = []
    for concept, datasets in (
        (codes.SUCCESSFUL_ANALYSES, [i.source for i in inputs.images]),
        (codes.FAILED_ANALYSES, inputs.failed),
    ):
        if not datasets:
            continue
        performed = _with(
            CodeContentItem(
                codes.ANALYSIS_PERFORMED, codes.INDIVIDUAL_IMPRESSION_ANALYSIS, CONTAINS
            ),
            [
                *_algorithm_items(algorithm),
                *[_image(ds, codes.SOURCE, HAS_PROPERTIES) for ds in datasets],
            ],
        )
        container = ContainerContentItem(concept, relationship_type=INFERRED_FROM)
        groups.append(_with(container, [performed]))
    if inputs.images and inputs.failed:
        status = codes.PARTIALLY_SUCCEEDED
    elif inputs.images:
        status = codes.SUCCEEDED
    else:
        status = codes.FAILED
    return _with(CodeContentItem(codes.SUMMARY_OF_ANALYSES, status, CONTAINS), groups)


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
        CodeContentItem(codes.SUMMARY_OF_DETECTIONS, codes.NOT_ATTEMPTED, CONTAINS),
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
