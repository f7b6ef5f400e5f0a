"""One study, one patient: identifying UIDs of the right VR, and no other patient's instance.

Over real associations on loopback (pynetdicom as the peer).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from factories import four_views, mammogram
from helpers import wait_for
from model_factory import tiny_model_folder
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scu import store
from sqlalchemy import update

from cad_node import dicom_status
from cad_node.audit.jobs import JobRepository
from cad_node.audit.models import Study
from cad_node.audit.views import EventRecord
from cad_node.node import Node

_TAGS = {"StudyInstanceUID": 0x0020000D, "SeriesInstanceUID": 0x0020000E}


def _patient(ds: Dataset, patient_id: str, issuer: str | None = None) -> Dataset:
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    return ds


def _rejections(node: Node) -> list[EventRecord]:
    return [e for e in node.repo.recent_events(limit=500) if e.kind == "instance.rejected"]


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
    details = {e.detail for e in _rejections(node)}
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


def test_instance_of_another_patient_is_refused(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    views = [_patient(ds, "PATIENT-A") for ds in four_views()]
    uid = views[0].StudyInstanceUID
    assert store(node.scp.port, views[:3]) == [dicom_status.SUCCESS] * 3
    intruder = _patient(mammogram(study_uid=uid, laterality="R", view="MLO"), "PATIENT-B")
    caplog.set_level(logging.INFO, logger="cad_node")
    assert store(node.scp.port, [intruder]) == [dicom_status.CANNOT_UNDERSTAND_PATIENT_CONFLICT]

    assert not node.repo.is_stored(intruder.SOPInstanceUID)
    assert not node.spool.path_of(f"{uid}/{intruder.SOPInstanceUID}.dcm").exists()
    study = node.repo.show_study(uid)
    assert study is not None
    assert [i.outcome for i in study.instances] == ["stored"] * 3 + ["rejected"]
    assert study.instances[-1].status == 0xC250
    [event] = _rejections(node)
    assert event.detail == "PatientID differs from the study's"
    assert event.study_instance_uid == uid
    assert event.sop_instance_uid == intruder.SOPInstanceUID
    lines = [r.getMessage() for r in caplog.records if intruder.SOPInstanceUID in r.getMessage()]
    assert len(lines) == 1 and "PatientID differs from the study's" in lines[0]
    assert "PATIENT-" not in lines[0]
    # The right patient's last view is still welcome, and completes the study.
    assert store(node.scp.port, views[3:]) == [dicom_status.SUCCESS]
    done = wait_for(lambda: (s := node.repo.show_study(uid)) and s.state == "complete" and s)
    assert done.views == ["L-CC", "L-MLO", "R-CC", "R-MLO"]


def test_same_patient_id_of_another_issuer_is_refused(node: Node) -> None:
    uid = generate_uid()
    first = _patient(mammogram(study_uid=uid), "12345", issuer="HOSPITAL-A")
    other = _patient(mammogram(study_uid=uid, laterality="R"), "12345", issuer="HOSPITAL-B")
    same = _patient(mammogram(study_uid=uid, view="MLO"), "12345", issuer="HOSPITAL-A")
    assert store(node.scp.port, [first, other, same]) == [
        dicom_status.SUCCESS,
        dicom_status.CANNOT_UNDERSTAND_PATIENT_CONFLICT,
        dicom_status.SUCCESS,
    ]
    [event] = _rejections(node)
    assert event.detail == "IssuerOfPatientID differs from the study's"


def test_resent_instance_naming_another_patient_is_not_acknowledged(node: Node) -> None:
    """A duplicate is normally answered Success; not when it names another patient."""
    ds = _patient(mammogram(), "PATIENT-A")
    assert store(node.scp.port, [ds]) == [dicom_status.SUCCESS]
    _patient(ds, "PATIENT-B")
    assert store(node.scp.port, [ds]) == [dicom_status.CANNOT_UNDERSTAND_PATIENT_CONFLICT]
    study = node.repo.show_study(ds.StudyInstanceUID)
    assert study is not None
    assert [i.outcome for i in study.instances] == ["stored", "rejected"]


@pytest.mark.slow
def test_study_with_instances_of_two_patients_is_never_analysed(
    node_factory: Any, tmp_path: Path
) -> None:
    """Defence in depth: a study recorded before the check (no patient digests) got mixed."""
    ingest_only = node_factory(pipeline=False, study_quiet_seconds=30)
    views = [_patient(ds, "PATIENT-A") for ds in four_views()]
    uid = views[0].StudyInstanceUID
    assert store(ingest_only.scp.port, views[:3]) == [dicom_status.SUCCESS] * 3
    with ingest_only.engine.begin() as conn:  # as a database migrated from before the check
        conn.execute(
            update(Study).values(
                patient_salt=None, patient_id_digest=None, patient_issuer_digest=None
            )
        )
    assert store(ingest_only.scp.port, [_patient(views[3], "PATIENT-B")]) == [0]
    ingest_only.stop()

    node = node_factory(
        pipeline=True, model=str(tiny_model_folder(tmp_path / "model")), study_quiet_seconds=0.5
    )
    jobs = JobRepository(node.engine)
    [job] = wait_for(
        lambda: [j for j in jobs.jobs_of_study(uid) if j.state == "failed"], timeout=60
    )
    assert "more than one patient (PatientID differs between them)" in job.error
    assert job.result is None and job.deliveries == []
    assert not list(node.settings.outbox_dir.rglob("*.dcm"))
