"""Lesion detections in the result objects: CAD SR findings, TID 1500 regions, heatmap marks."""

from __future__ import annotations

import dataclasses
import itertools
import re
import subprocess
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from cad_node.model_folder import Manifest, ModelInfo
from cad_node.reporting import ReportingError, build_result_objects
from cad_node.reporting.common import NOT_VALIDATED, Algorithm
from cad_node.results import Finding, ImageFailure, StudyAnalysis
from tests.model_factory import in_memory_manifest

PLAIN = Algorithm(name="bright-spot", version="1.2.3", threshold=0.5)
LOCALISING = Algorithm(name="lesion-map", version="2.0.0", threshold=0.5, localises=True)
MakeSources = Callable[..., list[Dataset]]
MakeAnalysis = Callable[..., StudyAnalysis]

DETECTIONS: dict[str, list[dict[str, float]]] = {
    "L-CC": [
        {"x": 30.25, "y": 80.5, "radius": 8.0, "score": 0.875},
        {"x": 70.0, "y": 110.0, "radius": 5.5, "score": 0.25},
    ],
    "L-MLO": [],
    "R-CC": [{"x": 94.0, "y": 100.0, "radius": 6.0, "score": 0.5}],
    "R-MLO": [{"x": 50.5, "y": 90.0, "radius": 10.0, "score": 0.125}],
}
"""Source pixels of 96-column, 128-row images; all values exact in binary. Below the label."""

EXPECTED = [
    # view, centre (column, row) in DICOM Graphic Data, point on the circle, certainty (%)
    ("L-CC", (30.75, 81.0), (38.75, 81.0), 87.5),
    ("L-CC", (70.5, 110.5), (76.0, 110.5), 25.0),
    ("R-CC", (94.5, 100.5), (88.5, 100.5), 50.0),  # right edge: the point goes to the left
    ("R-MLO", (51.0, 90.5), (61.0, 90.5), 12.5),
]
"""Graphic Data puts the top left pixel's centre at 0.5\\0.5: array indices + 0.5."""


def round_trip(ds: Dataset) -> Dataset:
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


def _named(ds: Dataset, meaning: str) -> list[Dataset]:
    return [
        i
        for i in _items(ds)
        if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


def _child(item: Dataset, meaning: str) -> list[Dataset]:
    return [
        c
        for c in item.get("ContentSequence", [])
        if "ConceptNameCodeSequence" in c and c.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


def _points(scoord: Dataset) -> list[tuple[float, float]]:
    data = [float(v) for v in scoord.GraphicData]
    return list(zip(data[0::2], data[1::2], strict=True))


def _selected_from(scoord: Dataset) -> str:
    [image] = scoord.ContentSequence
    assert image.RelationshipType == "SELECTED FROM" and image.ValueType == "IMAGE"
    return str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def _with_detections(analysis: StudyAnalysis) -> StudyAnalysis:
    for image in analysis.images:
        image.findings = [Finding.from_dict(d) for d in DETECTIONS[image.view]]
    return analysis


@pytest.fixture
def detected(analysis: StudyAnalysis) -> StudyAnalysis:
    return _with_detections(analysis)


@pytest.fixture
def objects(detected: StudyAnalysis, sources: list[Dataset]) -> list[Dataset]:
    return [round_trip(o.dataset) for o in build_result_objects(detected, sources, LOCALISING)]


@pytest.fixture
def uid_of_view(sources: list[Dataset]) -> dict[str, str]:
    return {f"{s.ImageLaterality}-{s.ViewPosition}": str(s.SOPInstanceUID) for s in sources}


def test_cad_sr_reports_each_detection_as_a_single_image_finding(
    objects: list[Dataset], uid_of_view: dict[str, str]
) -> None:
    sr = objects[0]
    [detections] = _named(sr, "Summary of Detections")
    assert detections.ConceptCodeSequence[0].CodeMeaning == "Succeeded"
    [successful] = _child(detections, "Successful Detections")
    assert successful.RelationshipType == "INFERRED FROM"
    [performed] = _child(successful, "Detection Performed")
    assert performed.ConceptCodeSequence[0].CodeValue == "111099"  # Selected region
    images = {
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in performed.ContentSequence
        if i.ValueType == "IMAGE"
    }
    assert images == set(uid_of_view.values())

    impressions = _named(sr, "Individual Impression/Recommendation")
    per_breast = [len(_child(imp, "Single Image Finding")) for imp in impressions]
    assert per_breast == [2, 2]  # left: L-CC x2; right: R-CC and R-MLO
    findings = [f for imp in impressions for f in _child(imp, "Single Image Finding")]
    assert len(findings) == len(EXPECTED)
    for finding, (view, centre, edge, certainty) in zip(findings, EXPECTED, strict=True):
        assert finding.RelationshipType == "CONTAINS"
        assert finding.ConceptCodeSequence[0].CodeMeaning == "Selected region"
        [value] = _child(finding, "Certainty of Finding")
        measured = value.MeasuredValueSequence[0]
        assert float(measured.NumericValue) == certainty
        assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "%"
        [point] = _child(finding, "Center")
        [outline] = _child(finding, "Outline")
        assert (point.GraphicType, outline.GraphicType) == ("POINT", "CIRCLE")
        assert _points(point) == [centre]
        assert _points(outline) == [centre, edge]
        assert _selected_from(point) == _selected_from(outline) == uid_of_view[view]
        assert [t.TextValue for t in _child(finding, "Algorithm Name")] == ["lesion-map"]

    intents = [_child(f, "Rendering Intent")[0].ConceptCodeSequence[0].CodeValue for f in findings]
    # required in the suspicious left breast, optional in the other
    assert intents == ["111150", "111150", "111151", "111151"]
    descriptions = [_child(imp, "Impression Description")[0].TextValue for imp in impressions]
    assert all("Localised findings: 2." in d for d in descriptions)


def test_tid1500_has_a_planar_roi_group_per_detection(
    objects: list[Dataset], uid_of_view: dict[str, str]
) -> None:
    sr = objects[1]
    groups = _named(sr, "Measurement Group")
    names = [_child(g, "Tracking Identifier")[0].TextValue for g in groups]
    assert names == [
        "Left breast",
        "Right breast",
        "L-CC finding 1",
        "L-CC finding 2",
        "R-CC finding 1",
        "R-MLO finding 1",
    ]
    regions = groups[2:]
    uids = [str(_child(g, "Tracking Unique Identifier")[0].UID) for g in regions]
    assert len(set(uids)) == len(uids)
    for group, (view, centre, edge, certainty) in zip(regions, EXPECTED, strict=True):
        [finding] = _child(group, "Finding")
        assert finding.ConceptCodeSequence[0].CodeValue == "111099"
        [site] = _child(group, "Finding Site")
        assert site.ConceptCodeSequence[0].CodeMeaning == "Breast"
        [laterality] = _child(site, "Laterality")
        expected_side = "Left" if view.startswith("L") else "Right"
        assert laterality.ConceptCodeSequence[0].CodeMeaning == expected_side
        [region] = _child(group, "Image Region")
        assert region.ValueType == "SCOORD" and region.GraphicType == "CIRCLE"
        assert _points(region) == [centre, edge]
        assert _selected_from(region) == uid_of_view[view]
        [score] = _child(group, "Certainty of Finding")
        measured = score.MeasuredValueSequence[0]
        assert float(measured.NumericValue) == certainty / 100
        assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "1"


def test_tracking_uids_of_detections_are_stable(
    detected: StudyAnalysis, sources: list[Dataset]
) -> None:
    def uids() -> list[str]:
        sr = build_result_objects(detected, sources, LOCALISING, heatmaps=False)[1].dataset
        return [str(i.UID) for i in _named(sr, "Tracking Unique Identifier")]

    first = uids()
    assert len(first) == 6 and first == uids()


def _dump(dsrdump: str, ds: Dataset, path: Path) -> list[str]:
    """``dsrdump`` of an SR with long values and referenced UIDs in full, as lines."""
    ds.save_as(path, enforce_file_format=True)
    done = subprocess.run(
        [dsrdump, "+Pl", "+Pu", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "E:" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def _on_image(lines: list[str], graphic: str, uid: str) -> bool:
    """Some line shows ``graphic`` and the next one selects it from image ``uid``."""
    return any(
        graphic in line and "selected from IMAGE" in after and uid in after
        for line, after in itertools.pairwise(lines)
    )


def test_dsrdump_shows_the_coordinates_of_every_detection(
    objects: list[Dataset], tmp_path: Path, dsrdump: str, uid_of_view: dict[str, str]
) -> None:
    cad = _dump(dsrdump, objects[0], tmp_path / "cad.dcm")
    tid1500 = _dump(dsrdump, objects[1], tmp_path / "tid1500.dcm")
    for view, (cx, cy), (ex, ey), _certainty in EXPECTED:
        point = f'"Center")=(POINT,{cx:g}/{cy:g})'
        circle = f"(CIRCLE,{cx:g}/{cy:g},{ex:g}/{ey:g})"
        assert _on_image(cad, point, uid_of_view[view]), point
        assert _on_image(cad, f'"Outline")={circle}', uid_of_view[view]), circle
        assert _on_image(tid1500, f'"Image Region")={circle}', uid_of_view[view]), circle
    assert sum("(POINT," in line for line in cad) == len(EXPECTED)
    assert sum("(CIRCLE," in line for line in cad) == len(EXPECTED)
    assert sum("(CIRCLE," in line for line in tid1500) == len(EXPECTED)


def test_dciodvfy_reports_no_errors_with_detections(
    objects: list[Dataset], tmp_path: Path, dciodvfy: Callable[[Path], list[str]]
) -> None:
    assert len(objects) == 6
    for n, ds in enumerate(objects):
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy(path) == [], f"object {n} ({ds.SOPClassUID.name})"


def _yellow(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] > 200) & (pixels[..., 1] > 200) & (pixels[..., 2] < 80)


def test_heatmaps_mark_each_detection_with_a_circle(
    objects: list[Dataset], make_analysis: MakeAnalysis, sources: list[Dataset]
) -> None:
    unmarked = make_analysis(sources)  # the same analysis without detections
    same_label = dataclasses.replace(LOCALISING, localises=False)
    plain = [o.dataset for o in build_result_objects(unmarked, sources, same_label)][2:]
    marked = objects[2:]
    views = [f"{s.ImageLaterality}-{s.ViewPosition}" for s in sources]
    for view, with_marks, without in zip(views, marked, plain, strict=True):
        assert with_marks.BurnedInAnnotation == "YES"
        assert "not for diagnosis" in with_marks.DerivationDescription
        a, b = with_marks.pixel_array, without.pixel_array
        top = slice(0, a.shape[0] // 3)
        assert np.array_equal(a[top], b[top])  # the label with its caveat is left alone
        changed = np.any(a != b, axis=2)
        if not DETECTIONS[view]:
            assert not changed.any(), view
            continue
        for d in DETECTIONS[view]:
            ring = [
                (round(d["y"] + d["radius"] * np.sin(t)), round(d["x"] + d["radius"] * np.cos(t)))
                for t in np.linspace(0.0, 2 * np.pi, 16, endpoint=False)
            ]
            inside = [(r, c) for r, c in ring if 0 <= r < a.shape[0] and 0 <= c < a.shape[1]]
            windows = [
                (slice(max(r - 1, 0), r + 2), slice(max(c - 1, 0), c + 2)) for r, c in inside
            ]
            hits = sum(bool(_yellow(a[w]).any() and changed[w].any()) for w in windows)
            assert len(inside) >= 8 and hits >= 0.75 * len(inside), (view, d, hits)
            # the inside of the circle keeps the heatmap
            centre = (int(d["y"]), int(d["x"]))
            assert not changed[centre], (view, d)


def test_without_localisation_detections_are_not_attempted(
    analysis: StudyAnalysis,
    sources: list[Dataset],
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    sr = round_trip(build_result_objects(analysis, sources, PLAIN, heatmaps=False)[0].dataset)
    [detections] = _named(sr, "Summary of Detections")
    assert detections.ConceptCodeSequence[0].CodeMeaning == "Not Attempted"
    assert "ContentSequence" not in detections
    assert not _named(sr, "Single Image Finding")
    assert not [i for i in _items(sr) if i.ValueType == "SCOORD"]
    sr.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    assert dciodvfy(tmp_path / "plain.dcm") == []


def test_a_localising_model_that_finds_nothing_succeeded_without_findings(
    analysis: StudyAnalysis,
    sources: list[Dataset],
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    objects = [o.dataset for o in build_result_objects(analysis, sources, LOCALISING)]
    sr = objects[0]
    [detections] = _named(sr, "Summary of Detections")
    assert detections.ConceptCodeSequence[0].CodeMeaning == "Succeeded"
    assert not _named(sr, "Single Image Finding")
    assert len(_named(objects[1], "Measurement Group")) == 2  # the breasts only
    for n, ds in enumerate(objects[:2]):
        ds.save_as(tmp_path / f"{n}.dcm", enforce_file_format=True)
        assert dciodvfy(tmp_path / f"{n}.dcm") == []


def test_failed_images_make_detection_partially_succeeded(
    make_sources: MakeSources, make_analysis: MakeAnalysis
) -> None:
    sources = make_sources()
    analysis = _with_detections(make_analysis(sources[:3]))
    analysis.errors = [ImageFailure(sources[3].SOPInstanceUID, "undecodable")]
    sr = build_result_objects(analysis, sources, LOCALISING, heatmaps=False)[0].dataset
    [detections] = _named(sr, "Summary of Detections")
    assert detections.ConceptCodeSequence[0].CodeMeaning == "Partially Succeeded"
    [failed] = _child(detections, "Failed Detections")
    [performed] = _child(failed, "Detection Performed")
    [image] = [i for i in performed.ContentSequence if i.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sources[3].SOPInstanceUID
    assert len(_named(sr, "Single Image Finding")) == 3  # R-MLO failed: its mark is gone


def test_findings_of_an_algorithm_that_does_not_localise_are_refused(
    detected: StudyAnalysis, sources: list[Dataset]
) -> None:
    # (malformed findings cannot reach reporting: tests/test_results.py)
    with pytest.raises(ReportingError, match="does not localise"):
        build_result_objects(detected, sources, PLAIN)


def test_a_centre_off_the_image_is_moved_to_its_edge(
    detected: StudyAnalysis, sources: list[Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    detected.images[0].findings = [
        Finding(x=97.0, y=100.0, radius=4.0, score=0.5),  # 96 columns: off by 1.5
        Finding(x=-0.25, y=100.0, radius=4.0, score=0.5),  # within the first pixel
    ]
    sr = build_result_objects(detected, sources, LOCALISING, heatmaps=False)[0].dataset
    centres = [_points(p) for p in _named(sr, "Center")][:2]
    assert centres == [[(95.5, 100.5)], [(0.25, 100.5)]]
    assert "off image" in caplog.text


def test_algorithm_of_a_model_knows_whether_it_localises_and_is_validated() -> None:
    plain = in_memory_manifest(
        name="m", version="1", threshold=0.5, input={"spacing_mm": 1, "size": [8, 8]}
    )
    lesion = Manifest.from_dict(
        {**plain.to_dict(), "output": "score+lesion_map", "lesion_map": {"stride": 4}}
    )
    assert Algorithm.of(ModelInfo.of(lesion)).localises
    algorithm = Algorithm.of(ModelInfo.of(plain))
    assert not algorithm.localises
    assert algorithm.caveat == NOT_VALIDATED  # a smoke-test model
    assert (algorithm.name, algorithm.version, algorithm.threshold) == ("m", "1", 0.5)


def test_dsr2html_renders_the_coordinates_of_every_detection(
    objects: list[Dataset], tmp_path: Path, dsr2html: str, uid_of_view: dict[str, str]
) -> None:
    points = sorted((f"{cx:g}/{cy:g}", uid_of_view[v]) for v, (cx, cy), _, _ in EXPECTED)
    circles = sorted(
        (f"{cx:g}/{cy:g},{ex:g}/{ey:g}", uid_of_view[v]) for v, (cx, cy), (ex, ey), _ in EXPECTED
    )
    html = []
    for n, ds in enumerate(objects[:2]):
        path = tmp_path / f"sr{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        done = subprocess.run(
            [dsr2html, "+Rd", str(path)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        html.append(done.stdout)
    graphic = r"<b>Graphic Data:</b><br>([0-9./,]+)</p>"
    # the CAD SR: a POINT centre and a CIRCLE outline per finding, each with its image
    on_image = re.findall(graphic + r".*?dicom\.cgi\?image=[0-9.]+\+([0-9.]+)", html[0], re.S)
    assert sorted(g for g in on_image if "," not in g[0]) == points
    assert sorted(g for g in on_image if "," in g[0]) == circles
    # TID 1500: the circle of each planar ROI (its image is not rendered beside it)
    assert sorted(re.findall(graphic, html[1])) == sorted(c for c, _ in circles)
