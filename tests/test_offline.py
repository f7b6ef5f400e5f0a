"""Offline analysis without the command line: reading inputs, grouping, writing the results."""

from __future__ import annotations

from pathlib import Path

from factories import four_views, mammogram, write
from model_factory import bright_spot_model
from pydicom import dcmread
from pydicom.uid import generate_uid

from cad_node.offline import (
    OfflineOptions,
    analyse_offline,
    group_datasets,
    read_inputs,
    safe_name,
)


def test_read_inputs_searches_folders_and_skips_what_is_not_dicom(tmp_path: Path) -> None:
    images = [write(ds, tmp_path / "in" / "deep") for ds in four_views()]
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    single = write(mammogram(), tmp_path / "single")
    found = read_inputs([tmp_path / "in", single])
    assert sorted(str(ds.SOPInstanceUID) for ds in found.datasets) == sorted(
        str(dcmread(p).SOPInstanceUID) for p in [*images, single]
    )
    assert found.skipped == [tmp_path / "in" / "notes.txt"]


def test_grouping_by_patient_joins_views_that_each_have_their_own_study() -> None:
    views = []
    for side, view in [("LEFT", "CC"), ("LEFT", "MLO"), ("RIGHT", "CC")]:
        ds = mammogram(laterality=side[0], view=view)
        ds.PatientID = f"Mass-Test_P_00820_{side}_{view}"
        views.append(ds)
    other = mammogram()
    del other.StudyInstanceUID
    by_study = group_datasets([*views, other], "study")
    assert sorted(map(len, by_study.values())) == [1, 1, 1, 1]
    assert by_study["unknown"] == [other]
    by_patient = group_datasets(views, "patient")
    assert list(by_patient) == ["MASS-TEST_P_00820"]
    assert by_patient["MASS-TEST_P_00820"] == views


def test_analysis_writes_overlays_and_result_objects_into_the_study_folder(
    tmp_path: Path,
) -> None:
    uid = generate_uid()
    datasets = four_views(uid, rows=128, cols=96)
    options = OfflineOptions(heatmap_dir=tmp_path / "maps", dicom_dir=tmp_path / "dicom")
    [study] = analyse_offline(datasets, bright_spot_model(), options)
    assert study.study_instance_uid == uid
    assert study.missing_views == [] and study.errors == []
    assert sorted(study.breasts) == ["L", "R"]
    pngs = sorted((tmp_path / "maps" / uid).glob("*.png"))
    assert len(pngs) == 4
    assert {p.name.split("_")[0] for p in pngs} == {"L-CC", "L-MLO", "R-CC", "R-MLO"}
    objects = [dcmread(p) for p in (tmp_path / "dicom" / uid).glob("*.dcm")]
    assert all(o.StudyInstanceUID == uid for o in objects)
    assert sorted(o.Modality for o in objects).count("SR") == 2


def test_without_output_folders_nothing_is_written(tmp_path: Path) -> None:
    [study] = analyse_offline(four_views(), bright_spot_model(), OfflineOptions())
    assert len(study.images) == 4
    assert all(image.heatmap is None for image in study.images)
    assert list(tmp_path.iterdir()) == []


def test_safe_name_keeps_uids_and_replaces_path_separators() -> None:
    assert safe_name("1.2.840.113619") == "1.2.840.113619"
    assert safe_name("../etc/passwd") == ".._etc_passwd"
    assert safe_name("") == "study"
