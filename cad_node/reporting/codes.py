"""Coded concepts of the result objects, with where each comes from.

Standard codes are from DICOM PS3.16 (DCM: Annex D; SCT and UCUM as listed in the context
groups named beside them) and are checked against pydicom's copy of PS3.16 by the tests.
Meanings are written out here rather than taken from pydicom, whose copies of some meanings
carry a zero-width space ("Impression/\u200bRecommendation"). Constants are immutable
``Code`` values; highdicom makes a fresh ``CodedConcept`` of each wherever one is used.

PS3.16 has no concept for "at or above the model's operating threshold", so that one flag
uses the private coding scheme ``99CADNODE`` (declared in each SR's Coding Scheme
Identification Sequence).
"""

from __future__ import annotations

from typing import Final

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

from cad_node.domain import Laterality, ViewPosition


def _dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


# --- Private coding scheme --------------------------------------------------------------
PRIVATE_SCHEME: Final = "99CADNODE"


def private_scheme_identification() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification Sequence item that declares ``99CADNODE``."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="cad-node local concepts",
        responsible_organization="cad-node",
    )


SUSPICIOUS: Final = Code(
    "SUSPICIOUS", PRIVATE_SCHEME, "Score at or above the model's operating threshold"
)
"""Private: the flag a radiologist sees; its value is Yes/No (CID 230)."""

# --- TID 4000 Mammography CAD Document Root and the templates it includes ---------------
MAMMOGRAPHY_CAD_REPORT: Final = _dcm("111036", "Mammography CAD Report")
IMAGE_LIBRARY: Final = _dcm("111028", "Image Library")
IMAGE_LATERALITY: Final = _dcm("111027", "Image Laterality")  # TID 4020
IMAGE_VIEW: Final = _dcm("111031", "Image View")  # TID 4020
PATIENT_ORIENTATION_ROW: Final = _dcm("111044", "Patient Orientation Row")
PATIENT_ORIENTATION_COLUMN: Final = _dcm("111043", "Patient Orientation Column")
STUDY_DATE: Final = _dcm("111060", "Study Date")
STUDY_TIME: Final = _dcm("111061", "Study Time")
CONTENT_DATE: Final = _dcm("111018", "Content Date")
CONTENT_TIME: Final = _dcm("111019", "Content Time")
CAD_PROCESSING_AND_FINDINGS_SUMMARY: Final = _dcm("111017", "CAD Processing and Findings Summary")
INDIVIDUAL_IMPRESSION_RECOMMENDATION: Final = _dcm(
    "111034", "Individual Impression/Recommendation"
)  # TID 4003
RENDERING_INTENT: Final = _dcm("111056", "Rendering Intent")
IMPRESSION_DESCRIPTION: Final = _dcm("111033", "Impression Description")
PROBABILITY_OF_CANCER: Final = _dcm("111047", "Probability of cancer")  # CID 6048
SUMMARY_OF_DETECTIONS: Final = _dcm("111064", "Summary of Detections")
SUMMARY_OF_ANALYSES: Final = _dcm("111065", "Summary of Analyses")
SUCCESSFUL_ANALYSES: Final = _dcm("111062", "Successful Analyses")  # TID 4016
FAILED_ANALYSES: Final = _dcm("111024", "Failed Analyses")  # TID 4016
ANALYSIS_PERFORMED: Final = _dcm("111004", "Analysis Performed")  # TID 4018
ALGORITHM_NAME: Final = _dcm("111001", "Algorithm Name")  # TID 4019
ALGORITHM_VERSION: Final = _dcm("111003", "Algorithm Version")
ALGORITHM_PARAMETERS: Final = _dcm("111002", "Algorithm Parameters")
ALGORITHM_MANUFACTURER: Final = _dcm("122405", "Algorithm Manufacturer")
COMMENT: Final = _dcm("121106", "Comment")
SOURCE: Final = _sct("260753009", "Source")

# CID 6047 CAD Processing and Findings Summary
ALL_SUCCEEDED_WITH_FINDINGS: Final = _dcm("111242", "All algorithms succeeded; with findings")
ALL_SUCCEEDED_WITHOUT_FINDINGS: Final = _dcm("111241", "All algorithms succeeded; without findings")
NOT_ALL_SUCCEEDED_WITH_FINDINGS: Final = _dcm(
    "111244", "Not all algorithms succeeded; with findings"
)
NOT_ALL_SUCCEEDED_WITHOUT_FINDINGS: Final = _dcm(
    "111243", "Not all algorithms succeeded; without findings"
)
NONE_SUCCEEDED: Final = _dcm("111245", "No algorithms succeeded; without findings")

# CID 6042 Status of Results
SUCCEEDED: Final = _dcm("111222", "Succeeded")
PARTIALLY_SUCCEEDED: Final = _dcm("111223", "Partially Succeeded")
FAILED: Final = _dcm("111224", "Failed")
NOT_ATTEMPTED: Final = _dcm("111225", "Not Attempted")

# TID 4015/4017 CAD Detections Performed
SUCCESSFUL_DETECTIONS: Final = _dcm("111063", "Successful Detections")
FAILED_DETECTIONS: Final = _dcm("111025", "Failed Detections")
DETECTION_PERFORMED: Final = _dcm("111022", "Detection Performed")

# TID 4006 Mammography CAD Single Image Finding and TID 4021 Mammography CAD Geometry
SINGLE_IMAGE_FINDING: Final = _dcm("111059", "Single Image Finding")
CERTAINTY_OF_FINDING: Final = _dcm("111012", "Certainty of Finding")  # CID 6048
CENTER: Final = _dcm("111010", "Center")  # CID 219
OUTLINE: Final = _dcm("111041", "Outline")  # CID 219
DETECTION_FINDING: Final = _dcm("111099", "Selected region")  # CID 6014
"""What a detection is called (CID 6014): the lesion map localises a suspicious region but
does not say whether it is a density, a calcification cluster or a distortion, so the generic
"Selected region" is used rather than a lesion type the model does not report."""

# CID 6043 Types of Mammography CAD Analysis
INDIVIDUAL_IMPRESSION_ANALYSIS: Final = _dcm(
    "111233", "Individual Impression/Recommendation Analysis"
)

# CID 6034 Intended Use of CAD Output
PRESENTATION_REQUIRED: Final = _dcm(
    "111150", "Presentation Required: Rendering device is expected to present"
)
PRESENTATION_OPTIONAL: Final = _dcm("111151", "Presentation Optional: Rendering device may present")

# --- Anatomy, laterality, views -----------------------------------------------------------
BREAST: Final = _sct("76752008", "Breast")
FINDING_SITE: Final = _sct("363698007", "Finding Site")
LATERALITY: Final = _sct("272741003", "Laterality")
LEFT: Final = _sct("7771000", "Left")  # CID 244 Laterality
RIGHT: Final = _sct("24028007", "Right")
LEFT_BREAST: Final = _sct("80248007", "Left breast")  # CID 6022 Side
RIGHT_BREAST: Final = _sct("73056007", "Right breast")
CRANIO_CAUDAL: Final = _sct("399162004", "cranio-caudal")  # CID 4014
MEDIO_LATERAL_OBLIQUE: Final = _sct("399368009", "medio-lateral oblique")
MAMMOGRAPHY: Final = _sct("71651007", "Mammography")  # procedure reported
YES: Final = _sct("373066001", "Yes")  # CID 230
NO: Final = _sct("373067005", "No")

# --- Units (UCUM) and equipment ------------------------------------------------------------
NO_UNITS: Final = Code("1", "UCUM", "no units")
"""The score is a probability in [0, 1], so it carries no unit (CID 7181)."""
PERCENT: Final = Code("%", "UCUM", "Percent")
"""TID 4006 fixes Certainty of Finding in percent, 0-100 (CID 7181)."""
PROCESSING_EQUIPMENT: Final = _dcm("109102", "Processing Equipment")  # CID 7005
SOURCE_IMAGE_FOR_PROCESSING: Final = _dcm(
    "121322", "Source image for image processing operation"
)  # CID 7202

SIDE_OF_BREAST: Final[dict[Laterality, Code]] = {
    Laterality.LEFT: LEFT_BREAST,
    Laterality.RIGHT: RIGHT_BREAST,
}
LATERALITY_CODE: Final[dict[Laterality, Code]] = {
    Laterality.LEFT: LEFT,
    Laterality.RIGHT: RIGHT,
}
VIEW_CODE: Final[dict[ViewPosition, Code]] = {
    ViewPosition.CC: CRANIO_CAUDAL,
    ViewPosition.MLO: MEDIO_LATERAL_OBLIQUE,
}

STANDARD_CODES: Final[tuple[Code, ...]] = tuple(
    value
    for name, value in sorted(globals().items())
    if isinstance(value, Code) and value.scheme_designator != PRIVATE_SCHEME
)
"""Every standard code above, for the test that checks them against PS3.16."""
