"""No patient data in logs or the audit database: distinctive strings sent, then grepped for.

Every element that can carry patient data gets a distinctive value, in valid studies (stored and
analysed) and in invalid ones (bad values, rejected instances, a patient conflict). Afterwards
the captured logs (DEBUG, every logger, Python warnings included) and every column of the SQLite
audit database must contain none of them.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import four_views, mammogram
from helpers import wait_for
from model_factory import tiny_model_folder
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from scu import store

from cad_node import dicom_status
from cad_node.audit.jobs import JobRepository
from cad_node.audit.views import JobRecord
from cad_node.node import Node

NEEDLES = re.compile(r"zzphi|1907-11-23|19071123", re.IGNORECASE)
"""Every patient value below contains one of these; none may appear in a log or the DB."""

VALID: dict[str, Any] = {
    "PatientName": "ZZPHI^NAMEVALID",
    "PatientID": "ZZPHI-ID-VALID",
    "IssuerOfPatientID": "ZZPHI-ISSUER",
    "OtherPatientIDs": "ZZPHI-OTHERID",
    "OtherPatientNames": "ZZPHI^OTHERNAME",
    "PatientBirthName": "ZZPHI^BIRTHNAME",
    "PatientMotherBirthName": "ZZPHI^MOTHER",
    "PatientBirthDate": "19071123",
    "PatientAddress": "ZZPHI street 1, ZZPHI town",
    "PatientTelephoneNumbers": "ZZPHI-PHONE",
    "PatientComments": "ZZPHI comment",
    "MedicalRecordLocator": "ZZPHI-MRL",
    "ReferringPhysicianName": "ZZPHI^REFERRER",
    "InstitutionName": "ZZPHI Hospital",
    "AccessionNumber": "ZZPHIACC",
    "StudyID": "ZZPHISTUDY",
}

INVALID: dict[str, Any] = {
    **VALID,
    "PatientName": "ZZPHI-NAME-" + "X" * 70,  # a name component longer than 64 characters
    "PatientID": "ZZPHI-ID-INVALID-" + "X" * 60,  # longer than LO allows
    "PatientBirthDate": "1907-11-23",  # not a DA
    "PatientBirthTime": "zzphi",  # not a TM
    "PatientSex": "zzphi",  # not a CS
    "PatientAge": "ZZPHI",  # not an AS
}


def _with(ds: Dataset, values: dict[str, Any]) -> Dataset:
    """Set patient values without pydicom's assignment-time validation (invalid ones too)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        ds.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))
    return ds


def _db_texts(node: Node) -> list[tuple[str, str, str]]:
    """Every non-null value of every column of every table, as text: (table, column, value)."""
    path = node.settings.effective_database_url.removeprefix("sqlite:///")
    found = []
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            cursor = db.execute(f'SELECT * FROM "{table}"')
            columns = [d[0] for d in cursor.description]
            for row in cursor:
                found += [
                    (table, c, str(v)) for c, v in zip(columns, row, strict=True) if v is not None
                ]
    return found


def _jobs_settled(node: Node, uids: list[str]) -> list[JobRecord]:
    jobs = [j for uid in uids for j in JobRepository(node.engine).jobs_of_study(uid)]
    settled = len(jobs) == len(uids) and all(j.state in ("done", "failed") for j in jobs)
    return jobs if settled else []


@pytest.fixture
def warnings_logged() -> Iterator[None]:
    """Python warnings go to the log, as ``cad-node serve`` and ``worker`` route them."""
    logging.captureWarnings(True)
    yield
    logging.captureWarnings(False)


@pytest.mark.slow
@pytest.mark.usefixtures("warnings_logged")
def test_no_patient_data_in_logs_or_database(
    node_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    node = node_factory(pipeline=True, model=str(tiny_model_folder(tmp_path / "model")))
    port = node.scp.port

    valid = [_with(ds, VALID) for ds in four_views()]
    invalid = [_with(ds, INVALID) for ds in four_views()]
    assert store(port, valid) == [dicom_status.SUCCESS] * 4
    assert store(port, invalid) == [dicom_status.SUCCESS] * 4

    truncated = _with(mammogram(), INVALID)
    truncated.PixelData = truncated.PixelData[:100]
    wrong_vr = _with(mammogram(), VALID)
    wrong_vr.add(DataElement(0x0020000D, "US", 1))  # StudyInstanceUID with the wrong VR
    bad_uid = _with(mammogram(), INVALID)
    bad_uid.SeriesInstanceUID = "1.2.03"  # a leading zero
    other_patient = _with(
        mammogram(study_uid=valid[0].StudyInstanceUID, laterality="R", view="CC", seed=9),
        {**VALID, "PatientID": "ZZPHI-ID-OTHER"},
    )
    assert store(port, [truncated, wrong_vr, bad_uid, other_patient]) == [
        dicom_status.CANNOT_UNDERSTAND_PIXEL_DATA,
        dicom_status.CANNOT_UNDERSTAND_MISSING_UID,
        dicom_status.CANNOT_UNDERSTAND_MISSING_UID,
        dicom_status.CANNOT_UNDERSTAND_PATIENT_CONFLICT,
    ]

    uids = [str(valid[0].StudyInstanceUID), str(invalid[0].StudyInstanceUID)]
    jobs = wait_for(lambda: _jobs_settled(node, uids), timeout=90)
    # The study with invalid values is analysed too: its results leave those values empty.
    assert [j.state for j in jobs] == ["done", "done"]

    logged = caplog.text + "\n".join(r.getMessage() + str(r.exc_text or "") for r in caplog.records)
    assert not NEEDLES.findall(logged), [
        line for line in logged.splitlines() if NEEDLES.search(line)
    ][:10]
    leaks = [(t, c, v[:200]) for t, c, v in _db_texts(node) if NEEDLES.search(v)]
    assert leaks == []
