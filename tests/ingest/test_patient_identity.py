"""One study, one patient: the identifying UIDs must be well-formed UIDs of VR UI.

Over real associations on loopback (pynetdicom as the peer).
"""

from __future__ import annotations

from typing import Any

import pytest
from factories import mammogram
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from scu import store

from cad_node import dicom_status
from cad_node.node import Node

_TAGS = {"StudyInstanceUID": 0x0020000D, "SeriesInstanceUID": 0x0020000E}


def _patient(ds: Dataset, patient_id: str, issuer: str | None = None) -> Dataset:
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    return ds


def _rejections(node: Node) -> list[dict[str, Any]]:
    return [e for e in node.repo.recent_events(limit=500) if e["kind"] == "instance.rejected"]


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_uid_with_the_wrong_vr_is_refused(node: Node, keyword: str) -> None:
    """The reported defect: two patients' images with a StudyInstanceUID of VR US, value 1."""
    first = _patient(mammogram(), "PATIENT-A")
    second = _patient(mammogram(laterality="R"), "PATIENT-B")
    for ds in (first, second):
        ds.add(DataElement(_TAGS[keyword], "US", 1))
    assert store(node.scp.port, [first, second]) == [dicom_status.CANNOT_UNDERSTAND_MISSING_UID] * 2
    assert node.repo.list_studies() == []
    assert not node.repo.is_stored(first.SOPInstanceUID)
    assert list(node.spool.root.rglob("*.dcm")) == []
    details = {e["detail"] for e in _rejections(node)}
    assert details == {f"{keyword} has VR US, not UI"}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize(
    "value",
    [
        "1.2.03",  # a component with a leading zero
        "1." + "2" * 63,  # 65 characters
        "1.2.a",  # not digits and dots
        ["1.2.3", "1.2.4"],  # two values
    ],
)
def test_malformed_study_uid_is_refused(node: Node, value: Any) -> None:
    ds = mammogram()
    ds.add(DataElement(0x0020000D, "UI", value, validation_mode=0))
    assert store(node.scp.port, [ds]) == [dicom_status.CANNOT_UNDERSTAND_MISSING_UID]
    assert node.repo.list_studies() == []
