"""Result objects of a four-view analysis: valid DICOM, readable by peers, referencing sources."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    MammographyCADSRStorage,
    SecondaryCaptureImageStorage,
)

from cad_node.reporting import (
    HEATMAP_SC,
    MAMMO_CAD_SR,
    TID1500_SR,
    DocumentRef,
    ReportingError,
    build_result_objects,
)
from cad_node.reporting.common import Algorithm
from cad_node.results import ImageFailure, StudyAnalysis

PRIVATE = "99CADNODE"
ALGORITHM = Algorithm(name="bright-spot", version="1.2.3", threshold=0.5)
MakeSources = Callable[..., list[Dataset]]
MakeAnalysis = Callable[..., StudyAnalysis]


def build(*args: Any, **kwargs: Any) -> list[Dataset]:
    """The result datasets, without their kinds."""
    return [o.dataset for o in build_result_objects(*args, **kwargs)]


def _encoded(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def round_trip(ds: Dataset) -> Dataset:
    """Write as a DICOM file to memory and read it back."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _items(ds: Dataset) -> list[Dataset]:
    """Every content item of an SR, depth first."""
    found: list[Dataset] = []
    stack = list(ds.get("ContentSequence", []))
    while stack:
        item = stack.pop(0)
        found.append(item)
        stack[:0] = list(item.get("ContentSequence", []))
    return found


def _referenced_instances(sr: Dataset) -> set[str]:
    refs = set()
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in sr.get(keyword, []):
            for series in study.ReferencedSeriesSequence:
                refs |= {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence}
    return refs


def _named(sr: Dataset, meaning: str) -> list[Dataset]:
    return [
        i
        for i in _items(sr)
        if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


@pytest.fixture
def objects(analysis: StudyAnalysis, sources: list[Dataset]) -> list[Dataset]:
    return build(analysis, sources, ALGORITHM)


def test_one_sr_of_each_kind_and_a_heatmap_per_view(
    objects: list[Dataset], sources: list[Dataset]
) -> None:
    assert [str(o.SOPClassUID) for o in objects] == [
        MammographyCADSRStorage,
        Comprehensive3DSRStorage,
        *[SecondaryCaptureImageStorage] * len(sources),
    ]
    study = sources[0].StudyInstanceUID
    assert {o.StudyInstanceUID for o in objects} == {study}
    series = [o.SeriesInstanceUID for o in objects]
    assert len(set(series)) == 3  # one new series per object kind
    assert not set(series) & {s.SeriesInstanceUID for s in sources}
    assert len({o.SOPInstanceUID for o in objects}) == len(objects)


def test_every_object_round_trips_under_strict_reading(
    objects: list[Dataset], strict_reading: None
) -> None:
    for ds in objects:
        back = round_trip(ds)
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.SOPClassUID == ds.SOPClassUID
        assert _encoded(back) == _encoded(ds)  # nothing lost or changed on the way
        if "PixelData" in back:
            assert np.array_equal(back.pixel_array, ds.pixel_array)


def test_dciodvfy_reports_no_errors(
    objects: list[Dataset], tmp_path: Path, dciodvfy: Callable[[Path], list[str]]
) -> None:
    for n, ds in enumerate(objects):
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy(path) == [], f"object {n} ({ds.SOPClassUID.name})"


def test_dcmtk_reads_both_srs(
    objects: list[Dataset], tmp_path: Path, dsrdump: str, dsr2html: str
) -> None:
    for n, ds in enumerate(objects[:2]):
        path = tmp_path / f"sr{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        dump = subprocess.run([dsrdump, str(path)], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0, dump.stderr
        assert "E:" not in dump.stderr, dump.stderr
        html = subprocess.run([dsr2html, str(path)], capture_output=True, text=True, timeout=60)
        assert html.returncode == 0, html.stderr
        assert "bright-spot" in html.stdout
        assert "0.75" in html.stdout and "0.1562" in html.stdout  # breast scores (4 decimals)
        assert "not a diagnosis" in html.stdout


def test_common_attributes(objects: list[Dataset], sources: list[Dataset]) -> None:
    source = sources[0]
    for ds in objects:
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "StudyID",
            "AccessionNumber",
        ):
            assert str(ds[keyword].value) == str(source[keyword].value), keyword
        assert ds.Manufacturer == "cad-node"
        assert ds.ManufacturerModelName == ALGORITHM.name
        assert ALGORITHM.version in list(np.atleast_1d(ds.SoftwareVersions))
        assert "not" in ds.SeriesDescription and "diagnosis" in ds.SeriesDescription
        ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "cad-node"]
        assert len(ours) == 1
        assert ours[0].ManufacturerModelName == ALGORITHM.name
        assert ours[0].SoftwareVersions == ALGORITHM.version
        assert "not a diagnosis" in ours[0].ContributionDescription


def test_srs_reference_every_analysed_source(
    objects: list[Dataset], sources: list[Dataset]
) -> None:
    expected = {str(s.SOPInstanceUID) for s in sources}
    for sr in objects[:2]:
        assert _referenced_instances(sr) == expected
        in_tree = {
            str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for i in _items(sr)
            if i.ValueType == "IMAGE"
        }
        assert in_tree == expected
        assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == [
            PRIVATE
        ]


def test_mammo_cad_sr_content(objects: list[Dataset]) -> None:
    sr = objects[0]
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "4000"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "111036"
    [summary] = _named(sr, "CAD Processing and Findings Summary")
    assert summary.ConceptCodeSequence[0].CodeValue == "111242"  # with findings
    impressions = _named(sr, "Individual Impression/Recommendation")
    assert len(impressions) == 2
    left, right = impressions

    def flag(item: Dataset) -> str:
        [code] = [
            c
            for c in item.ContentSequence
            if c.ValueType == "CODE"
            and c.ConceptNameCodeSequence[0].CodingSchemeDesignator == PRIVATE
        ]
        return str(code.ConceptCodeSequence[0].CodeMeaning)

    assert (flag(left), flag(right)) == ("Yes", "No")
    scores = [
        float(n.MeasuredValueSequence[0].NumericValue)
        for imp in impressions
        for n in imp.ContentSequence
        if n.ValueType == "NUM"
    ]
    assert scores == [0.75, 0.1562]
    assert [
        c.ConceptCodeSequence[0].CodeValue
        for imp in impressions
        for c in imp.ContentSequence
        if c.ConceptNameCodeSequence[0].CodeMeaning == "Rendering Intent"
    ] == ["111150", "111151"]
    [comment] = _named(sr, "Comment")
    assert "not a diagnosis" in comment.TextValue
    library = _named(sr, "Image Library")[0]
    views = [
        [c.ConceptCodeSequence[0].CodeValue for c in entry.ContentSequence if c.ValueType == "CODE"]
        for entry in library.ContentSequence
    ]
    assert views == [
        ["80248007", "399162004"],
        ["80248007", "399368009"],
        ["73056007", "399162004"],
        ["73056007", "399368009"],
    ]
    names = {i.TextValue for i in _named(sr, "Algorithm Name")}
    assert names == {"bright-spot"}


def test_tid1500_content(objects: list[Dataset]) -> None:
    sr = objects[1]
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = _named(sr, "Measurement Group")
    assert [g.ContentSequence[0].TextValue for g in groups] == ["Left breast", "Right breast"]
    values = [
        float(n.MeasuredValueSequence[0].NumericValue) for n in _named(sr, "Probability of cancer")
    ]
    assert values == [0.75, 0.1562]
    units = {
        n.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
        for n in _named(sr, "Probability of cancer")
    }
    assert units == {"1"}
    flags = [
        i.ConceptCodeSequence[0].CodeMeaning
        for i in _items(sr)
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodingSchemeDesignator == PRIVATE
    ]
    assert flags == ["Yes", "No"]
    [observer] = _named(sr, "Device Observer Name")
    assert observer.TextValue == "bright-spot"


def test_heatmaps(objects: list[Dataset], sources: list[Dataset]) -> None:
    heatmaps = objects[2:]
    assert len({h.SeriesInstanceUID for h in heatmaps}) == 1
    for n, (sc, source) in enumerate(zip(heatmaps, sources, strict=True), start=1):
        assert sc.InstanceNumber == n
        assert sc.PatientID == source.PatientID and sc.StudyInstanceUID == source.StudyInstanceUID
        assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
        assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
        assert sc.BurnedInAnnotation == "YES"
        assert sc.ImageLaterality == source.ImageLaterality
        assert list(sc.PatientOrientation) == list(source.PatientOrientation)
        view = f"{source.ImageLaterality}-{source.ViewPosition}"
        assert view in sc.DerivationDescription and "not for diagnosis" in sc.DerivationDescription
        [ref] = sc.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        pixels = sc.pixel_array
        assert pixels.shape == (source.Rows, source.Columns, 3)
        yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 200) & (pixels[..., 2] < 80)
        assert yellow[: source.Rows // 3].any()  # the burned-in label is drawn at the top
        assert np.abs(pixels[..., 0].astype(int) - pixels[..., 2].astype(int)).max() > 50  # colour


def _strip(ds: Dataset) -> list[str]:
    """A dataset as text without UIDs, dates and times."""
    lines = []
    for element in ds.iterall():
        if element.VR in ("UI", "DA", "TM", "DT") or element.keyword == "PixelData":
            continue
        lines.append(f"{element.tag} {element.value!r}" if element.VR != "SQ" else str(element.tag))
    return lines


def test_same_input_same_content(analysis: StudyAnalysis, sources: list[Dataset]) -> None:
    first = build(analysis, sources, ALGORITHM)
    second = build(analysis, sources, ALGORITHM)
    for a, b in zip(first, second, strict=True):
        assert _strip(a) == _strip(b)
        if "PixelData" in a:
            assert a.PixelData == b.PixelData
    tracking = [
        [str(i.UID) for i in _named(objs[1], "Tracking Unique Identifier")]
        for objs in (first, second)
    ]
    assert tracking[0] == tracking[1]  # re-analysis tracks the same breasts


def test_predecessor_documents(analysis: StudyAnalysis, sources: list[Dataset]) -> None:
    first = build(analysis, sources, ALGORITHM)
    again = build(analysis, sources, ALGORITHM, previous=first)
    for old, new in zip(first[:2], again[:2], strict=True):
        [study] = new.PredecessorDocumentsSequence
        assert study.StudyInstanceUID == old.StudyInstanceUID
        [series] = study.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == old.SeriesInstanceUID
        [instance] = series.ReferencedSOPSequence
        assert instance.ReferencedSOPInstanceUID == old.SOPInstanceUID
        assert instance.ReferencedSOPClassUID == old.SOPClassUID
    # UIDs alone do as well, and only the SR of the same class is listed
    ref = DocumentRef.of(first[0])
    by_uids = build(analysis, sources, ALGORITHM, previous=[ref], heatmaps=False)
    assert len(by_uids) == 2
    assert "PredecessorDocumentsSequence" in by_uids[0]
    assert "PredecessorDocumentsSequence" not in by_uids[1]
    assert "PredecessorDocumentsSequence" not in first[0]


def test_partial_analysis_is_reported_as_such(
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
    make_sources: MakeSources,
    make_analysis: MakeAnalysis,
) -> None:
    sources = make_sources()
    analysis = make_analysis(sources[:3])  # R-MLO absent
    analysis.missing_views = ["R-MLO"]
    analysis.errors = [ImageFailure(sources[3].SOPInstanceUID, "undecodable")]
    sr = build(analysis, sources, ALGORITHM, heatmaps=False)[0]
    [summary] = _named(sr, "CAD Processing and Findings Summary")
    assert summary.ConceptCodeSequence[0].CodeValue == "111244"  # not all succeeded; findings
    [status] = _named(sr, "Summary of Analyses")
    assert status.ConceptCodeSequence[0].CodeMeaning == "Partially Succeeded"
    [comment] = _named(sr, "Comment")
    assert "R-MLO" in comment.TextValue
    assert _referenced_instances(sr) == {str(s.SOPInstanceUID) for s in sources}
    sr.save_as(tmp_path / "partial.dcm", enforce_file_format=True)
    assert dciodvfy(tmp_path / "partial.dcm") == []


def test_nothing_analysed_gives_a_valid_cad_sr(
    tmp_path: Path, dciodvfy: Callable[[Path], list[str]], make_sources: MakeSources
) -> None:
    sources = make_sources()
    analysis = StudyAnalysis(
        study_instance_uid=str(sources[0].StudyInstanceUID),
        images=[],
        breasts={},
        missing_views=["L-CC", "L-MLO", "R-CC", "R-MLO"],
        errors=[ImageFailure(s.SOPInstanceUID, "bad") for s in sources],
        not_analysed=[],
    )
    objects = build(analysis, sources, ALGORITHM)
    assert [str(o.SOPClassUID) for o in objects] == [MammographyCADSRStorage]  # nothing measured
    [summary] = _named(objects[0], "CAD Processing and Findings Summary")
    assert summary.ConceptCodeSequence[0].CodeValue == "111245"
    for n, sr in enumerate(objects):
        sr.save_as(tmp_path / f"{n}.dcm", enforce_file_format=True)
        assert dciodvfy(tmp_path / f"{n}.dcm") == []


def test_mismatched_inputs_are_refused(analysis: StudyAnalysis, sources: list[Dataset]) -> None:
    with pytest.raises(ReportingError, match="no source dataset"):
        build(analysis, sources[1:], ALGORITHM)
    with pytest.raises(ReportingError, match="no source belongs to study"):
        build(StudyAnalysis("1.2.3", [], {}, [], [], []), sources, ALGORITHM)
    for image in analysis.images:
        image.heatmap = None
    with pytest.raises(ReportingError, match="without heatmaps"):
        build(analysis, sources, ALGORITHM)
    assert len(build(analysis, sources, ALGORITHM, heatmaps=False)) == 2


def test_objects_carry_their_kind(analysis: StudyAnalysis, sources: list[Dataset]) -> None:
    kinds = [o.kind for o in build_result_objects(analysis, sources, ALGORITHM)]
    assert kinds == [MAMMO_CAD_SR, TID1500_SR, *[HEATMAP_SC] * len(sources)]


def test_a_long_model_name_still_makes_valid_objects(
    sources: list[Dataset],
    analysis: StudyAnalysis,
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    """Descriptions embed the model's name; LO values must still fit 64 characters."""
    algorithm = Algorithm("densenet121-untrained-timing-stand-in-with-a-long-name", "0.1.0", 0.5)
    objects = [o.dataset for o in build_result_objects(analysis, sources, algorithm)]
    for n, ds in enumerate(objects):
        assert len(ds.SeriesDescription) <= 64 and ds.SeriesDescription.endswith("diagnosis")
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy(path) == [], f"object {n} ({ds.SOPClassUID.name})"
    with pytest.raises(ValueError, match="64 characters"):
        Algorithm("x" * 65, "1", 0.5)


def test_an_unvalidated_model_says_so_in_every_object(
    sources: list[Dataset], analysis: StudyAnalysis
) -> None:
    """A radiologist sees the caveat in the viewer, not only in the model card."""
    from cad_node.reporting.common import NOT_VALIDATED

    algorithm = Algorithm("coin", "0.1.0", 0.5, caveat=NOT_VALIDATED)
    objects = [round_trip(o.dataset) for o in build_result_objects(analysis, sources, algorithm)]
    for ds in objects:
        descriptions = [e.ContributionDescription for e in ds.ContributingEquipmentSequence]
        assert any(NOT_VALIDATED in d for d in descriptions)
    cad_sr = objects[0]
    assert any(NOT_VALIDATED in str(i.get("TextValue", "")) for i in _named(cad_sr, "Comment"))
    for sc in objects[2:]:
        assert NOT_VALIDATED in sc.DerivationDescription
    # Without a caveat, none of it appears.
    plain = [o.dataset for o in build_result_objects(analysis, sources, ALGORITHM)]
    assert not any("NOT VALIDATED" in str(ds.ContributingEquipmentSequence) for ds in plain)
