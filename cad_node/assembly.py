"""Study assembly: what each instance shows, and when a study is complete.

Pure functions over header-only pydicom datasets and plain values; the ingest handler and the
study monitor are the thin adapters around them. DICOM has no "study complete" message, so a
study is complete once no new instance has arrived for a quiet period.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydicom.dataset import Dataset

from cad_node.domain import STANDARD_VIEWS, Laterality, ViewPosition, view_name
from cad_node.errors import PatientConflictError
from cad_node.sop_classes import (
    BREAST_TOMOSYNTHESIS,
    MAMMOGRAPHY_FOR_PROCESSING,
)

# SNOMED CT codes of CID 4014 (View for Mammography), with their legacy SNOMED RT forms.
_VIEW_CODES: dict[tuple[str, str], ViewPosition] = {
    ("SCT", "399162004"): ViewPosition.CC,
    ("SRT", "R-10242"): ViewPosition.CC,
    ("SNM3", "R-10242"): ViewPosition.CC,
    ("SCT", "399368009"): ViewPosition.MLO,
    ("SRT", "R-10226"): ViewPosition.MLO,
    ("SNM3", "R-10226"): ViewPosition.MLO,
}

_SIDE = r"(?P<side>LEFT|RIGHT|L|R)"
_VIEW = r"(?P<view>CC|MLO)"
_SEP = r"[\s_\-\.]*"
_EDGE_BEFORE = r"(?<![A-Z0-9])"
_EDGE_AFTER = r"(?![A-Z0-9])"
_TEXT_PATTERNS = (
    re.compile(_EDGE_BEFORE + _SIDE + _SEP + _VIEW + _EDGE_AFTER),
    re.compile(_EDGE_BEFORE + _VIEW + _SEP + _SIDE + _EDGE_AFTER),
)
_TEXT_SOURCES = ("SeriesDescription", "ProtocolName", "PatientID", "PatientName")
"""Checked in order when the structured attributes are absent. CBIS-DDSM keeps the view
only in PatientID (``Mass-Test_P_00820_LEFT_CC``)."""


@dataclass(frozen=True, repr=False)
class PatientIdentity:
    """Whose images these are: PatientID and IssuerOfPatientID (empty when absent).

    Never printed: ``repr`` and ``str`` withhold the values, so they cannot reach a log line
    or a traceback by accident. The audit database keeps only :meth:`digests` of them.
    """

    patient_id: str
    issuer: str

    def __repr__(self) -> str:
        return "PatientIdentity(<withheld>)"

    __str__ = __repr__

    def digests(self, salt: bytes) -> tuple[str, str]:
        """Salted HMAC-SHA256 of the PatientID and of the issuer (hex)."""

        def digest(value: str) -> str:
            return hmac.new(salt, value.encode("utf-8"), hashlib.sha256).hexdigest()

        return digest(self.patient_id), digest(self.issuer)


def patient_identity(ds: Dataset) -> PatientIdentity:
    """The patient an instance names (leading and trailing spaces are not significant)."""
    return PatientIdentity(_text(ds, "PatientID"), _text(ds, "IssuerOfPatientID"))


def require_one_patient(datasets: Iterable[Dataset]) -> None:
    """Raise :class:`PatientConflictError` when the datasets name more than one patient."""
    identities = {patient_identity(ds) for ds in datasets}
    if len(identities) > 1:
        differs = []
        if len({i.patient_id for i in identities}) > 1:
            differs.append("PatientID")
        if len({i.issuer for i in identities}) > 1:
            differs.append("IssuerOfPatientID")
        verb = "differs" if len(differs) == 1 else "differ"
        raise PatientConflictError(
            f"the study's instances name more than one patient ({' and '.join(differs)} "
            f"{verb} between them); not analysed"
        )


@dataclass(frozen=True)
class InstanceInfo:
    """What the node needs to know about one received instance.

    Patient data only as :class:`PatientIdentity`, which never prints.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    laterality: Laterality | None
    view_position: str | None
    """The projection as found (``CC``, ``MLO``, ``XCCL``...), or None."""
    view: str | None
    """``L-CC``/``L-MLO``/``R-CC``/``R-MLO`` when the model can analyse this projection."""
    not_analysed_reason: str | None
    """Why this instance is recorded but not analysed; None when it is analysable."""
    patient: PatientIdentity
    """Whose image this is, for the check that a study holds one patient only."""

    @property
    def analysable(self) -> bool:
        """True when the instance is a For-Presentation mammogram of a standard view."""
        return self.not_analysed_reason is None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def dataset_laterality(ds: Dataset) -> Laterality | None:
    """The breast an image shows, from ImageLaterality, else Laterality (L/R only)."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(ds, keyword).upper()
        if value in ("L", "R"):
            return Laterality(value)
    return None


def _coded_view(ds: Dataset) -> ViewPosition | None:
    for item in ds.get("ViewCodeSequence", []) or []:
        key = (_text(item, "CodingSchemeDesignator").upper(), _text(item, "CodeValue"))
        if key in _VIEW_CODES:
            return _VIEW_CODES[key]
    return None


def _view_from_text(ds: Dataset) -> tuple[Laterality | None, ViewPosition | None]:
    for keyword in _TEXT_SOURCES:
        text = _text(ds, keyword).upper()
        if not text:
            continue
        for pattern in _TEXT_PATTERNS:
            match = pattern.search(text)
            if match:
                side = Laterality(match.group("side")[0])
                return side, ViewPosition(match.group("view"))
    return None, None


def identify(ds: Dataset) -> InstanceInfo:
    """Identify an instance from its header: UIDs, modality, laterality and view.

    Structured attributes win (ViewPosition, ViewCodeSequence, ImageLaterality/Laterality);
    free text is only a fallback. The dataset must already have valid UIDs (the ingest
    handler checks them first).
    """
    sop_class = _text(ds, "SOPClassUID")
    modality = _text(ds, "Modality").upper()
    laterality = dataset_laterality(ds)
    raw_position = _text(ds, "ViewPosition").upper() or None
    position: ViewPosition | None = None
    if raw_position in ("CC", "MLO"):
        position = ViewPosition(raw_position)
    elif raw_position is None:
        position = _coded_view(ds)
    if laterality is None or (position is None and raw_position is None):
        text_side, text_view = _view_from_text(ds)
        laterality = laterality or text_side
        if raw_position is None and position is None:
            position = text_view
    found_position = raw_position or (position.value if position else None)

    reason: str | None = None
    intent = _text(ds, "PresentationIntentType").upper()
    if sop_class == BREAST_TOMOSYNTHESIS:
        reason = "breast tomosynthesis is recorded, not analysed"
    elif sop_class == MAMMOGRAPHY_FOR_PROCESSING or intent == "FOR PROCESSING":
        reason = "For Processing image"
    elif modality != "MG":
        reason = f"not a mammogram (modality {modality or 'missing'})"
    elif laterality is None:
        reason = "unknown laterality"
    elif position is None:
        reason = f"view {found_position} is not analysed" if found_position else "unknown view"

    view = view_name(laterality, position) if laterality and position else None
    return InstanceInfo(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=sop_class,
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        modality=modality,
        laterality=laterality,
        view_position=found_position,
        view=view if reason is None else None,
        not_analysed_reason=reason,
        patient=patient_identity(ds),
    )


def patient_key(ds: Dataset) -> str:
    """PatientID with any side/view text removed (``Mass-Test_P_00820_LEFT_CC`` -> ``..._P_00820``).

    Used to regroup archives that give every view its own StudyInstanceUID (CBIS-DDSM).
    """
    text = _text(ds, "PatientID").upper()
    for pattern in _TEXT_PATTERNS:
        text = pattern.sub("", text)
    return text.strip(" _-.")


def views_present_and_missing(views: Iterable[str | None]) -> tuple[list[str], list[str]]:
    """The standard views present among analysable instances, and those missing, sorted."""
    present = sorted({v for v in views if v in STANDARD_VIEWS})
    missing = [v for v in STANDARD_VIEWS if v not in present]
    return present, missing


def quiet_cutoff(now: datetime, quiet_seconds: float) -> datetime:
    """Studies whose last instance arrived at or before this moment are complete."""
    return now - timedelta(seconds=quiet_seconds)
