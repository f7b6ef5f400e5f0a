"""Sources with values highdicom refuses still get their results: those values are left empty,
the patient and study stay identified, and nothing logged quotes the values."""

from __future__ import annotations

import logging
from collections.abc import Callable
from io import BytesIO

import pydicom
import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from cad_node.reporting import build_result_objects
from cad_node.reporting.common import Algorithm
from cad_node.results import StudyAnalysis

_UNPARSEABLE = {
    "PatientBirthDate": (0x00100030, "DA", "1907-11-23"),
    "PatientSex": (0x00100040, "CS", "FEMALE"),
    "StudyDate": (0x00080020, "DA", "2024.13.45"),
    "StudyTime": (0x00080030, "TM", "10:15 am"),
}


def test_values_highdicom_cannot_parse_are_left_empty(
    make_sources: Callable[..., list[Dataset]],
    make_analysis: Callable[..., StudyAnalysis],
    caplog: pytest.LogCaptureFixture,
    strict_reading: None,
) -> None:
    sources = make_sources()
    for ds in sources:  # every view: the results take the attributes from one of them
        for tag, vr, value in _UNPARSEABLE.values():
            ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
    algorithm = Algorithm(name="bright-spot", version="1.2.3", threshold=0.5)
    with caplog.at_level(logging.DEBUG):
        objects = [ds for _, ds in build_result_objects(make_analysis(sources), sources, algorithm)]
    assert len(objects) == 6
    for ds in objects:
        for keyword in _UNPARSEABLE:
            assert ds[keyword].value in ("", None), keyword
        assert ds.PatientID == sources[0].PatientID
        assert ds.PatientName == sources[0].PatientName
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        pydicom.dcmread(BytesIO(buffer.getvalue()))  # valid values only: strict reading passes
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "PatientBirthDate is not a valid DA value" in logged
    assert not [v for _, _, v in _UNPARSEABLE.values() if v in logged]
