"""What every result object shares: the algorithm, the target study, references, equipment.

Pure helpers over header datasets; no pixel data is read here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, Final

from highdicom import ContributingEquipment, PatientSexValues
from highdicom.sr import (
    DeviceObserverIdentifyingAttributes,
    ObservationContext,
    ObserverContext,
)
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import DA, TM

from cad_node.domain import STANDARD_VIEWS, Laterality, ViewPosition
from cad_node.errors import ReportingError as ReportingError  # re-exported for callers
from cad_node.reporting import codes
from cad_node.results import DECISION_SUPPORT, Finding, ImageResult, StudyAnalysis

if TYPE_CHECKING:
    from cad_node.inference.model import CadModel
    from cad_node.model_folder import ModelInfo

log = logging.getLogger(__name__)

MANUFACTURER: Final = "cad-node"
MAMMOGRAPHY_CAD_SR_SERIES: Final = 9001
MEASUREMENT_REPORT_SERIES: Final = 9002
HEATMAP_SERIES: Final = 9003
"""Series numbers of the three object kinds; fixed so that viewers sort them the same way."""

_PATIENT_STUDY_TYPE2: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_ORIENTATION: Final = re.compile(r"^(A|P|R|L|H|F)+$")


LO_MAX = 64
"""Longest value of the DICOM Long String (LO) VR: descriptions, model names, versions."""


NOT_VALIDATED = (
    "MODEL NOT VALIDATED: its cross-validated accuracy is not shown to be better than chance; "
    "the scores carry no diagnostic information."
)
"""The caveat of a model whose validation does not show it better than chance."""


def fit_lo(template: str, label: str) -> str:
    """``template`` with ``{label}`` filled in, the label shortened so the result fits LO."""
    room = LO_MAX - len(template.format(label=""))
    if len(label) > room:
        label = label[: max(room - 2, 0)] + ".."
    return template.format(label=label)


@dataclass(frozen=True)
class Algorithm:
    """The model that produced an analysis, as the result objects name it (see
    :meth:`of`: derived from the model's :class:`~cad_node.model_folder.ModelInfo`)."""

    name: str
    version: str
    threshold: float
    manufacturer: str = MANUFACTURER
    caveat: str = ""
    """:data:`NOT_VALIDATED` for a model that is not validated, said in every object; else empty."""
    localises: bool = False
    """The model gives lesion detections (a lesion map); else it scores images only."""

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.version.strip():
            raise ValueError(f"algorithm name and version are required: {self!r}")
        if len(self.name) > LO_MAX or len(self.version) > LO_MAX:
            raise ValueError(f"algorithm name and version must fit {LO_MAX} characters")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold!r} is outside [0, 1]")

    @classmethod
    def of(cls, info: ModelInfo) -> Algorithm:
        """The algorithm of a model: its identity, and :data:`NOT_VALIDATED` unless it is
        validated."""
        return cls(
            info.name,
            info.version,
            info.threshold,
            caveat="" if info.validated else NOT_VALIDATED,
            localises=info.localises,
        )

    @classmethod
    def from_model(cls, model: CadModel) -> Algorithm:
        return cls.of(model.info)

    @property
    def caveat_sentence(self) -> str:
        """The caveat as a sentence to append to descriptions, or nothing."""
        return f" {self.caveat}" if self.caveat else ""

    @property
    def label(self) -> str:
        """``name version``, as written in descriptions and on heatmaps."""
        return f"{self.name} {self.version}"

    @property
    def parameters(self) -> list[str]:
        """TID 4019 Algorithm Parameters."""
        return [f"operating threshold {self.threshold:g}"]

    @property
    def device_uid(self) -> UID:
        """A stable Device Observer UID for this model name and version."""
        return generate_uid(entropy_srcs=[self.manufacturer, self.name, self.version])

    def contributing_equipment(self) -> ContributingEquipment:
        """The algorithm as Contributing Equipment (IHE AI Results)."""
        return ContributingEquipment(
            manufacturer=self.manufacturer,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=self.name,
            software_versions=self.version,
            contribution_description=(
                f"CAD analysis by {self.label}. {DECISION_SUPPORT}{self.caveat_sentence}"
            ),
        )

    def observation_context(self) -> ObservationContext:
        """TID 1001 with the algorithm as device observer (TID 1004)."""
        return ObservationContext(
            observer_device_context=ObserverContext(
                observer_type=pydicom_codes.DCM.Device,
                observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                    uid=self.device_uid,
                    name=self.name,
                    manufacturer_name=self.manufacturer,
                    model_name=fit_lo("{label}", self.label),
                ),
            )
        )


@dataclass(frozen=True)
class DocumentRef:
    """The UIDs of an earlier result object, enough for Predecessor Documents Sequence."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    @classmethod
    def of(cls, ds: Dataset | DocumentRef) -> DocumentRef:
        if isinstance(ds, DocumentRef):
            return ds
        try:
            return cls(
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID),
                str(ds.SOPClassUID),
            )
        except AttributeError as exc:
            raise ReportingError(f"predecessor lacks a UID: {exc}") from exc

    def as_dataset(self) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds


def predecessors_of_class(
    previous: Iterable[Dataset | DocumentRef], sop_class_uid: str
) -> list[Dataset] | None:
    """Earlier documents of one SOP class, as highdicom's ``previous_versions``; None if none."""
    found = [DocumentRef.of(p) for p in previous]
    matching = [p.as_dataset() for p in found if p.sop_class_uid == sop_class_uid]
    return matching or None


def sr_document_arguments(
    inputs: Inputs,
    algorithm: Algorithm,
    *,
    sop_class_uid: str,
    series_number: int,
    series_description: str,
    previous: Iterable[Dataset | DocumentRef],
    series_instance_uid: UID | None,
    sop_instance_uid: UID | None,
) -> dict[str, Any]:
    """The keyword arguments both SR documents pass to their highdicom class, content aside."""
    return {
        "evidence": inputs.evidence,
        "series_instance_uid": series_instance_uid or generate_uid(),
        "series_number": series_number,
        "sop_instance_uid": sop_instance_uid or generate_uid(),
        "instance_number": 1,
        "manufacturer": algorithm.manufacturer,
        "manufacturer_model_name": algorithm.name,
        "software_versions": algorithm.version,
        "series_description": fit_lo(series_description, algorithm.label),
        "is_complete": True,
        "previous_versions": predecessors_of_class(previous, sop_class_uid),
        "contributing_equipment": [algorithm.contributing_equipment()],
        "coding_schemes": [codes.private_scheme_identification()],
    }


_PARSED_BY_HIGHDICOM: Final[dict[str, Callable[[str], object]]] = {
    "PatientBirthDate": partial(DA, validation_mode=config.IGNORE),
    "PatientSex": PatientSexValues,
    "StudyDate": partial(DA, validation_mode=config.IGNORE),
    "StudyTime": partial(TM, validation_mode=config.IGNORE),
}
"""Patient and study attributes highdicom parses from the first evidence dataset (and refuses
when they do not parse): a birth date written ``1907-11-23`` would sink the whole report."""


def header(ds: Dataset) -> Dataset:
    """A pixel-free copy of a source whose patient/study attributes highdicom accepts.

    highdicom reads these attributes from the first evidence dataset. Absent Type 2 ones
    (archives often omit them) are left empty, and so are those whose values highdicom cannot
    parse (a date in the wrong format): empty means unknown, which is true of a value that
    cannot be read, whereas a value repaired here would be made up. Patient and study stay
    identified by their IDs and UIDs, copied as the source has them. An element whose value
    cannot be read at all is left out.
    """
    sop_uid = str(ds.get("SOPInstanceUID", "?"))
    copy = Dataset()
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset would hide which tag failed
        if tag.group == 0x7FE0:
            continue
        try:
            copy.add(ds[tag])
        except Exception as exc:  # pydicom's messages quote values: the type only
            log.warning(
                "source %s: element %s cannot be read (%s); left out of the results",
                sop_uid,
                tag,
                type(exc).__name__,
            )
    for keyword in _PATIENT_STUDY_TYPE2:
        if keyword not in copy:
            setattr(copy, keyword, None)
    for keyword, parse in _PARSED_BY_HIGHDICOM.items():
        value = copy.get(keyword)
        if value is None or value == "":
            continue
        try:
            parse(str(value))
        except (TypeError, ValueError):
            log.warning(
                "source %s: %s is not a valid %s value; left empty in the results",
                sop_uid,
                keyword,
                copy[keyword].VR,
            )
            setattr(copy, keyword, None)
    return copy


def graphic_centre(finding: Finding) -> tuple[float, float]:
    """A finding's centre as DICOM Graphic Data ``(column, row)``: the top left pixel's centre
    is (0.5, 0.5) (PS3.3 C.18.6.1.2), so half a pixel is added to the array indices."""
    return finding.x + 0.5, finding.y + 0.5


def graphic_edge(finding: Finding, columns: int) -> tuple[float, float]:
    """A point on a finding's circle in Graphic Data, ``radius`` to the right of the centre,
    or to the left where the right one would leave the image."""
    cx, cy = graphic_centre(finding)
    r = finding.radius
    return (cx + r, cy) if cx + r <= columns else (cx - r, cy)


@dataclass(frozen=True)
class AnalysedImage:
    """One analysed image with its source header."""

    result: ImageResult
    source: Dataset

    @cached_property
    def findings(self) -> list[Finding]:
        """The image's findings, with centres kept on the image.

        A centre off the image (a peak of the lesion map in the padding around the breast)
        is moved to the nearest edge pixel, so that the mark stays where a viewer shows it.
        """
        rows, columns = int(self.source.Rows), int(self.source.Columns)
        found = []
        for d in self.result.findings:
            if not (-0.5 <= d.x <= columns - 0.5 and -0.5 <= d.y <= rows - 0.5):
                x = min(max(d.x, 0.0), columns - 1.0)
                y = min(max(d.y, 0.0), rows - 1.0)
                log.warning(
                    "detection at x=%s, y=%s is off image %s (%d columns, %d rows); "
                    "reported at its nearest edge pixel",
                    d.x,
                    d.y,
                    self.result.sop_instance_uid,
                    columns,
                    rows,
                )
                d = Finding(x, y, d.radius, d.score)
            found.append(d)
        return found

    @property
    def laterality(self) -> Laterality:
        return Laterality(self.result.view.split("-")[0])

    @property
    def position(self) -> ViewPosition:
        return ViewPosition(self.result.view.split("-")[1])


@dataclass(frozen=True)
class Inputs:
    """An analysis matched with its source headers, in a deterministic order."""

    analysis: StudyAnalysis
    study_reference: Dataset
    """The source whose patient and study the results are filed under."""
    images: list[AnalysedImage]
    failed: list[Dataset]
    """Sources the analysis tried and failed on (``analysis.errors``)."""

    @property
    def evidence(self) -> list[Dataset]:
        """Study reference first (highdicom copies patient and study from it), then the rest."""
        rest = [i.source for i in self.images] + self.failed
        first = self.study_reference
        return [first, *[d for d in rest if d.SOPInstanceUID != first.SOPInstanceUID]]

    def breast_images(self, laterality: Laterality) -> list[AnalysedImage]:
        return [i for i in self.images if i.laterality == laterality]

    def check_localisation(self, algorithm: Algorithm) -> None:
        """Refuse findings from an algorithm that does not localise (they would be
        reported beside "Summary of Detections: Not Attempted")."""
        if not algorithm.localises and any(i.result.findings for i in self.images):
            raise ReportingError(
                f"the analysis has findings but {algorithm.label} does not localise; "
                "build the Algorithm with localises=True"
            )


def _view_rank(view: str) -> int:
    return STANDARD_VIEWS.index(view) if view in STANDARD_VIEWS else len(STANDARD_VIEWS)


def match_sources(analysis: StudyAnalysis, sources: Sequence[Dataset]) -> Inputs:
    """Pair each analysed image with its source; choose the study the results belong to.

    Results go into ``analysis.study_instance_uid``, which must be the study of at least one
    source. Archives that split one exam over several studies (CBIS-DDSM) are grouped by the
    caller, who picks the study; sources from other studies are then referenced as Pertinent
    Other Evidence.
    """
    by_uid = {str(ds.SOPInstanceUID): header(ds) for ds in sources}
    images: list[AnalysedImage] = []
    for result in analysis.images:
        if result.sop_instance_uid not in by_uid:
            raise ReportingError(f"no source dataset for analysed image {result.sop_instance_uid}")
        images.append(AnalysedImage(result, by_uid[result.sop_instance_uid]))
    images.sort(key=lambda i: (_view_rank(i.result.view), i.result.sop_instance_uid))
    failed = [
        by_uid[e.sop_instance_uid]
        for e in sorted(analysis.errors, key=lambda e: e.sop_instance_uid)
        if e.sop_instance_uid in by_uid
    ]
    in_study = [
        d
        for d in [i.source for i in images] + failed
        if str(d.StudyInstanceUID) == analysis.study_instance_uid
    ]
    if not in_study:
        in_study = [
            by_uid[str(ds.SOPInstanceUID)]
            for ds in sources
            if str(ds.StudyInstanceUID) == analysis.study_instance_uid
        ]
    if not in_study:
        raise ReportingError(
            f"no source belongs to study {analysis.study_instance_uid}; results must be filed "
            "under the study of one of their sources"
        )
    return Inputs(analysis, in_study[0], images, failed)


def patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is valid (CBIS-DDSM writes ``CC`` there)."""
    value = ds.get("PatientOrientation")
    if value is None:
        return None
    raw = [value] if isinstance(value, str) else list(value)
    values = [str(v).strip().upper() for v in raw]
    if len(values) == 2 and all(_ORIENTATION.match(v) for v in values):
        return values[0], values[1]
    return None


BREAST_NAME: Final = {Laterality.LEFT: "Left breast", Laterality.RIGHT: "Right breast"}
"""How the reports name each breast."""


def score_value(score: float) -> float:
    """Scores as numeric SR content: four decimals, the same in both SRs."""
    return round(float(score), 4)


def score_text(score: float) -> str:
    """Scores as written in text: two decimals, the same everywhere."""
    return f"{score:.2f}"
