import pytest
from factories import mammogram
from pydicom.dataset import Dataset

from cad_node.assembly import identify, views_present_and_missing
from cad_node.domain import Laterality
from cad_node.sop_classes import BREAST_TOMOSYNTHESIS, SECONDARY_CAPTURE


@pytest.mark.parametrize(("lat", "view"), [("L", "CC"), ("R", "MLO"), ("R", "CC"), ("L", "MLO")])
def test_structured_view_and_laterality(lat: str, view: str) -> None:
    info = identify(mammogram(laterality=lat, view=view))
    assert info.view == f"{lat}-{view}"
    assert info.analysable


def test_view_code_sequence_alone_identifies_the_view() -> None:
    info = identify(mammogram(view="MLO", with_view_position=False))
    assert info.view == "L-MLO"


def test_legacy_snomed_rt_view_code() -> None:
    ds = mammogram(view="CC", with_view_position=False, with_view_code=False)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10242", "SRT", "cc"
    ds.ViewCodeSequence = [code]
    assert identify(ds).view == "L-CC"


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        ("PatientID", "Mass-Test_P_00820_LEFT_CC", "L-CC"),
        ("PatientID", "Calc-Training_P_00001_RIGHT_MLO", "R-MLO"),
        ("SeriesDescription", "R MLO", "R-MLO"),
        ("ProtocolName", "LCC tomo off", "L-CC"),
        ("SeriesDescription", "MLO-L", "L-MLO"),
    ],
)
def test_text_fallback(field: str, text: str, expected: str) -> None:
    ds = mammogram(with_view_position=False, with_view_code=False)
    del ds.ImageLaterality
    ds.PatientID = "X"
    setattr(ds, field, text)
    assert identify(ds).view == expected


def test_text_does_not_match_inside_words() -> None:
    ds = mammogram(with_view_position=False, with_view_code=False)
    del ds.ImageLaterality
    ds.SeriesDescription = "SCREENING CCD DETECTOR"
    info = identify(ds)
    assert info.view is None
    assert info.not_analysed_reason == "unknown laterality"


def test_laterality_falls_back_to_series_laterality() -> None:
    ds = mammogram(laterality="R")
    del ds.ImageLaterality
    ds.Laterality = "R"
    assert identify(ds).laterality is Laterality.RIGHT


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"for_processing": True}, "For Processing image"),
        ({"modality": "CR"}, "not a mammogram (modality CR)"),
        ({"sop_class": BREAST_TOMOSYNTHESIS}, "breast tomosynthesis is recorded, not analysed"),
        ({"view": "XCCL", "with_view_code": False}, "view XCCL is not analysed"),
    ],
)
def test_recorded_but_not_analysed(kwargs: dict[str, object], reason: str) -> None:
    info = identify(mammogram(**kwargs))  # type: ignore[arg-type]
    assert not info.analysable
    assert info.view is None
    assert info.not_analysed_reason == reason


def test_secondary_capture_mammogram_is_analysable() -> None:
    info = identify(mammogram(sop_class=SECONDARY_CAPTURE, view="MLO"))
    assert info.analysable and info.view == "L-MLO"


def test_views_present_and_missing() -> None:
    present, missing = views_present_and_missing(["R-CC", None, "L-CC", "R-CC", "L-XCCL"])
    assert present == ["L-CC", "R-CC"]
    assert missing == ["L-MLO", "R-MLO"]
