"""Comprehensive 3D SR with a TID 1500 Measurement Report: the form IHE AI Results and OHIF read.

One measurement group (TID 1501) per analysed breast: finding site breast with laterality,
the algorithm (TID 4019), the breast score as Probability of cancer (unit "1", the score is in
[0, 1]) inferred from the breast's images, and a qualitative evaluation "at or above the
operating threshold" Yes/No. The Tracking Unique Identifier of a breast is derived from the
study, the side and the model, so a re-analysis tracks the same breast. The observation
context names the algorithm as device observer. There is no image library (TID 1600 would
need Patient Orientation and Imager Pixel Spacing, which archives often lack); the groups
reference their source images instead.

After the breasts, one Planar ROI group (TID 1410) per detection of a localising model: a
tracking identifier ("L-CC finding 1") and UID derived from the study, image, position and
model; finding "Selected region"; finding site breast with laterality; the image region as
a SCOORD CIRCLE (centre, point on the circumference) on the source image, in its pixels
with the top left pixel's centre at 0.5\\0.5; and the detection score as Certainty of
Finding (unit "1", in [0, 1], as the breast scores here).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurement,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.uid import UID, Comprehensive3DSRStorage, generate_uid

from cad_node.domain import Laterality
from cad_node.reporting import codes
from cad_node.reporting.common import (
    BREAST_NAME,
    MEASUREMENT_REPORT_SERIES,
    Algorithm,
    AnalysedImage,
    DocumentRef,
    Inputs,
    ReportingError,
    graphic_centre,
    graphic_edge,
    score_value,
    sr_document_arguments,
)
from cad_node.results import Finding


def _algorithm_id(algorithm: Algorithm) -> AlgorithmIdentification:
    return AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=algorithm.parameters,
        manufacturer=algorithm.manufacturer,
    )


def _group(
    inputs: Inputs, laterality: Laterality, algorithm: Algorithm
) -> MeasurementsAndQualitativeEvaluations:
    breast = inputs.analysis.breasts[laterality.value]
    images = [i.source for i in inputs.breast_images(laterality)]
    site = FindingSite(codes.BREAST, laterality=codes.LATERALITY_CODE[laterality])
    tracking_uid = generate_uid(
        entropy_srcs=[inputs.analysis.study_instance_uid, laterality.value, algorithm.name]
    )
    score = Measurement(
        name=codes.PROBABILITY_OF_CANCER,
        value=score_value(breast.score),
        unit=codes.NO_UNITS,
        algorithm_id=_algorithm_id(algorithm),
        finding_sites=[site],
        referenced_images=[
            SourceImageForMeasurement(ds.SOPClassUID, ds.SOPInstanceUID) for ds in images
        ],
    )
    flag = QualitativeEvaluation(codes.SUSPICIOUS, codes.YES if breast.suspicious else codes.NO)
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=tracking_uid, identifier=BREAST_NAME[laterality]
        ),
        algorithm_id=_algorithm_id(algorithm),
        finding_sites=[site],
        measurements=[score],
        qualitative_evaluations=[flag],
        source_images=[
            SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID) for ds in images
        ],
    )


def _detection_group(
    inputs: Inputs, image: AnalysedImage, n: int, detection: Finding, algorithm: Algorithm
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 Planar ROI group of one detection: its circle on the source image."""
    ds = image.source
    site = FindingSite(codes.BREAST, laterality=codes.LATERALITY_CODE[image.laterality])
    tracking_uid = generate_uid(
        entropy_srcs=[
            inputs.analysis.study_instance_uid,
            str(ds.SOPInstanceUID),
            f"{detection.x}/{detection.y}",
            algorithm.name,
        ]
    )
    region = ImageRegion(
        graphic_type=GraphicTypeValues.CIRCLE,
        graphic_data=np.array(
            [graphic_centre(detection), graphic_edge(detection, int(ds.Columns))], dtype=np.float32
        ),
        source_image=SourceImageForRegion(ds.SOPClassUID, ds.SOPInstanceUID),
    )
    score = Measurement(
        name=codes.CERTAINTY_OF_FINDING,
        value=score_value(detection.score),
        unit=codes.NO_UNITS,
        algorithm_id=_algorithm_id(algorithm),
    )
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=tracking_uid, identifier=f"{image.result.view} finding {n}"
        ),
        referenced_region=region,
        finding_type=codes.DETECTION_FINDING,
        algorithm_id=_algorithm_id(algorithm),
        finding_sites=[site],
        measurements=[score],
    )


def measurement_report(inputs: Inputs, algorithm: Algorithm) -> MeasurementReport:
    """The TID 1500 content of an analysis."""
    inputs.check_localisation(algorithm)
    groups: list[MeasurementsAndQualitativeEvaluations] = [
        _group(inputs, lat, algorithm) for lat in Laterality if lat.value in inputs.analysis.breasts
    ]
    if not groups:
        raise ReportingError("no breast was analysed: a measurement report needs one")
    regions = [
        _detection_group(inputs, image, n, detection, algorithm)
        for image in inputs.images
        for n, detection in enumerate(image.findings, start=1)
    ]
    return MeasurementReport(
        observation_context=algorithm.observation_context(),
        procedure_reported=codes.MAMMOGRAPHY,
        imaging_measurements=[*groups, *regions],
    )


def build_measurement_report_sr(
    inputs: Inputs,
    algorithm: Algorithm,
    *,
    previous: Iterable[Dataset | DocumentRef] = (),
    series_instance_uid: UID | None = None,
    sop_instance_uid: UID | None = None,
) -> Comprehensive3DSR:
    """The Comprehensive 3D SR (TID 1500) of an analysis, filed in the analysed study."""
    return Comprehensive3DSR(
        content=measurement_report(inputs, algorithm),
        **sr_document_arguments(
            inputs,
            algorithm,
            sop_class_uid=Comprehensive3DSRStorage,
            series_number=MEASUREMENT_REPORT_SERIES,
            series_description="AI measurements ({label}) - not a diagnosis",
            previous=previous,
            series_instance_uid=series_instance_uid,
            sop_instance_uid=sop_instance_uid,
        ),
    )
