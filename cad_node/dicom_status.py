"""Named DIMSE status values, so no handler ever returns a bare number.

Values from DICOM PS3.4 (Annex B for the Storage Service Class, C.4 for C-ECHO) and PS3.7 Annex C.
The 0xC2xx codes are our own choices inside the "Cannot understand" range (0xC000-0xCFFF) that
PS3.4 B.2.3 leaves to the implementation; each one names a distinct reason so peers' logs tell
them apart.
"""

from __future__ import annotations

from typing import Final

SUCCESS: Final = 0x0000

# C-STORE failures (PS3.4 Table B.2-1)
OUT_OF_RESOURCES: Final = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
CANNOT_UNDERSTAND_UNDECODABLE: Final = 0xC210
"""The dataset could not be parsed (bad encoding, truncated stream)."""
CANNOT_UNDERSTAND_MISSING_UID: Final = 0xC220
"""A required UID (study, series, SOP instance, SOP class) is missing or malformed."""
CANNOT_UNDERSTAND_PIXEL_DATA: Final = 0xC230
"""Pixel data is absent, truncated or inconsistent with the image attributes."""
CANNOT_UNDERSTAND_PIXEL_ENCODING: Final = 0xC231
"""The first frame's pixel data does not decode (a corrupt or mismatched codestream): "Cannot
understand" (PS3.4 Annex B Table B.2-1), refused rather than stored and failed later."""
CANNOT_UNDERSTAND_ELEMENT_VALUE: Final = 0xC240
"""An element's value cannot be read (a VR that is not one of PS3.5's, a value its VR cannot
hold): a failure in the "Cannot understand" range (0xC000-0xCFFF, PS3.4 Annex B Table B.2-1),
not a processing failure (0x0110) that invites the peer to send the same bytes again. (0xC211
is what pynetdicom answers when a handler raises, so it is not used here.)"""
CANNOT_UNDERSTAND_PATIENT_CONFLICT: Final = 0xC250
"""The instance's PatientID or IssuerOfPatientID differs from those of its (known) study.

A failure of the "Error: Cannot understand" family (PS3.4 Table B.2-1, C000-CFFF), not 0xA900
"Data Set does not match SOP Class": the dataset is a valid instance of its SOP class, but the
node cannot place it, as one study belongs to one patient (PS3.3 A.1.2.2, Study IE)."""
PROCESSING_FAILURE: Final = 0x0110
"""An unexpected internal error; the peer may retry (PS3.7 C.4.3)."""

# C-STORE warnings (the peer stored the object)
WARNING_COERCION: Final = 0xB000
WARNING_ELEMENTS_DISCARDED: Final = 0xB006
WARNING_DATASET_MISMATCH: Final = 0xB007

DESCRIPTIONS: Final[dict[int, str]] = {
    SUCCESS: "success",
    OUT_OF_RESOURCES: "out of resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "dataset does not match SOP class",
    CANNOT_UNDERSTAND_UNDECODABLE: "cannot understand: undecodable dataset",
    CANNOT_UNDERSTAND_MISSING_UID: "cannot understand: missing or invalid UID",
    CANNOT_UNDERSTAND_PIXEL_DATA: "cannot understand: pixel data missing or inconsistent",
    CANNOT_UNDERSTAND_PIXEL_ENCODING: "cannot understand: pixel data does not decode",
    CANNOT_UNDERSTAND_ELEMENT_VALUE: "cannot understand: an element value cannot be read",
    CANNOT_UNDERSTAND_PATIENT_CONFLICT: "cannot understand: patient differs from the study's",
    PROCESSING_FAILURE: "processing failure",
    WARNING_COERCION: "coercion of data elements",
    WARNING_ELEMENTS_DISCARDED: "elements discarded",
    WARNING_DATASET_MISMATCH: "dataset does not match SOP class (warning)",
}


def describe(status: int) -> str:
    """Human-readable text for a status value, with its hex code."""
    return f"0x{status:04X} ({DESCRIPTIONS.get(status, 'unknown')})"
