"""Patient data stays out of text: withheld values, exception descriptions, invalid elements."""

from __future__ import annotations

import logging

import pytest
from factories import mammogram
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import DA

from cad_node import phi

BIRTH_DATE = "1907-11-23"
"""Not a DA (that is 19071123); kept out of the lines a traceback quotes."""


def test_quoted_values_are_withheld_but_vrs_and_keywords_kept() -> None:
    text = "Unable to convert '1907-11-23' to 'DA' object; copied \"PatientName\", \"Doe^Jane\""
    assert phi.withhold_values(text) == (
        f"Unable to convert {phi.WITHHELD} to 'DA' object; copied \"PatientName\", {phi.WITHHELD}"
    )


def _failing_conversion() -> ValueError:
    try:
        DA(BIRTH_DATE)
    except ValueError as exc:
        return exc
    raise AssertionError("pydicom accepted an invalid DA")


def test_an_exception_is_described_without_its_message() -> None:
    exc = _failing_conversion()
    assert BIRTH_DATE in str(exc)  # what pydicom says, and the node must not repeat
    assert phi.describe_exception(exc) == "ValueError in pydicom.valuerep.__new__"
    trace = phi.traceback_text(exc)
    assert "pydicom/valuerep.py" in trace and "ValueError" in trace
    assert BIRTH_DATE not in trace


def test_library_log_records_and_tracebacks_are_withheld(
    caplog: pytest.LogCaptureFixture,
) -> None:
    phi.guard_logs()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("pydicom").warning("Invalid value for VR DA: %r.", BIRTH_DATE)
    logging.getLogger("cad_node.test").error("failed", exc_info=_failing_conversion())
    assert BIRTH_DATE not in caplog.text
    assert f"Invalid value for VR DA: {phi.WITHHELD}." in caplog.text
    assert "ValueError" in caplog.text


def test_invalid_values_name_the_element_and_the_kind_of_problem() -> None:
    ds = mammogram()  # valid values throughout, DS and IS included
    assert phi.invalid_values([ds]) == []
    for keyword, vr, value in [
        ("PatientBirthDate", "DA", BIRTH_DATE),
        ("PatientID", "LO", "X" * 65),
        ("PatientName", "PN", "N" * 65),
    ]:
        ds.add(DataElement(keyword, vr, value, validation_mode=config.IGNORE))
    item = Dataset()
    item.add(DataElement("PatientSex", "CS", "female", validation_mode=config.IGNORE))
    ds.OtherPatientIDsSequence = [item]
    found = phi.invalid_values([ds, ds])
    assert found == [
        "PatientName (0010,0010): longer than VR PN allows",
        "PatientID (0010,0020): longer than VR LO allows",
        "PatientBirthDate (0010,0030): not a valid DA value",
        "OtherPatientIDsSequence[0].PatientSex (0010,0040): not a valid CS value",
    ]


def test_a_quoted_value_with_a_line_break_is_withheld() -> None:
    text = phi.withhold_values("Invalid value for VR PN: 'Doe\nJane' - must not contain")
    assert "Doe" not in text and "Jane" not in text
    assert phi.WITHHELD in text
