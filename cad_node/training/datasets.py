"""Training data layouts, labels, patient-level folds and the in-memory image cache.

Three layouts are understood:

* ``mias``: a CSV with ``refnum,file,laterality,background,label`` (extra columns allowed) and
  PNG images whose paths are relative to the CSV's folder or to ``images_root``;
* ``cbis-ddsm``: the official CBIS-DDSM description CSVs (``image file path`` column, DICOM);
* ``dicom``: a folder of DICOM files and a CSV of ``study_instance_uid,laterality,label``.

Every sample carries a patient identifier; folds never split a patient.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from cad_node.errors import InvalidDatasetError
from cad_node.inference.preprocess import (
    PreprocessConfig,
    Preprocessed,
    dataset_laterality,
    preprocess_array,
    preprocess_dataset,
)

log = logging.getLogger(__name__)

LABELS = ("normal", "benign", "malignant")
Task = Literal["malignant", "abnormal"]
TASKS: tuple[Task, ...] = ("malignant", "abnormal")
Layout = Literal["auto", "mias", "cbis-ddsm", "dicom"]
LAYOUTS: tuple[Layout, ...] = ("auto", "mias", "cbis-ddsm", "dicom")

#: Pixel spacing of the 512-pixel mini-MIAS PNGs (200 µm film scans downsampled by 2).
MIAS_512_SPACING_MM = 0.4

_MIAS_REF = re.compile(r"^mdb(\d{3})$")
_CBIS_PATIENT = re.compile(r"(?:Mass|Calc)-(?:Training|Test)_(P_\d+)_")


@dataclass(frozen=True)
class Sample:
    """One image with its label; ``patient_id`` groups the images of one woman."""

    sample_id: str
    patient_id: str
    path: Path
    laterality: str | None
    label: str
    spacing_mm: float | None = None
    kind: Literal["png", "dicom"] = "png"


def class_names(task: Task) -> tuple[str, str]:
    """Negative and positive class names for a task."""
    return ("not_malignant", "malignant") if task == "malignant" else ("normal", "abnormal")


def target(label: str, task: Task) -> int:
    """Binary target of a normal/benign/malignant label for a task."""
    if label not in LABELS:
        raise InvalidDatasetError(f"unknown label {label!r}; expected one of {LABELS}")
    if task == "malignant":
        return int(label == "malignant")
    return int(label != "normal")


def targets(samples: Sequence[Sample], task: Task) -> npt.NDArray[np.int64]:
    """Binary targets of several samples."""
    return np.array([target(s.label, task) for s in samples], dtype=np.int64)


def mias_patient_id(refnum: str) -> str:
    """Films mdb(2k-1) and mdb(2k) are the right and left breast of patient k."""
    match = _MIAS_REF.match(refnum)
    if match is None:
        return refnum
    return f"mias-{(int(match.group(1)) + 1) // 2:03d}"


def dicom_patient_id(patient_id: str) -> str:
    """PatientID, except CBIS-DDSM's per-view IDs (``Mass-Test_P_00173_LEFT_CC``) -> P_00173."""
    match = _CBIS_PATIENT.match(patient_id)
    return match.group(1) if match else patient_id


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise InvalidDatasetError(f"labels file not found: {path}")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InvalidDatasetError(f"labels file has no rows: {path}")
    return [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in rows]


def _norm_label(raw: str) -> str:
    label = raw.strip().lower()
    if label in {"benign_without_callback", "b"}:
        return "benign"
    if label == "m":
        return "malignant"
    if label in {"norm", "n"}:
        return "normal"
    if label not in LABELS:
        raise InvalidDatasetError(f"unknown label {raw!r}")
    return label


def _norm_laterality(raw: str | None) -> str | None:
    if not raw:
        return None
    value = raw.strip().upper()
    if value in {"L", "LEFT"}:
        return "L"
    if value in {"R", "RIGHT"}:
        return "R"
    return None


def load_mias_csv(
    csv_path: Path, images_root: Path | None = None, spacing_mm: float = MIAS_512_SPACING_MM
) -> list[Sample]:
    """Read a mini-MIAS style CSV (``refnum,file,laterality,background,label``)."""
    rows = _read_csv(csv_path)
    missing = {"refnum", "file", "label"} - set(rows[0])
    if missing:
        raise InvalidDatasetError(f"{csv_path}: missing columns {sorted(missing)}")
    root = images_root if images_root is not None else csv_path.parent
    samples = []
    for row in rows:
        ref = row["refnum"]
        patient = row.get("patient_id") or mias_patient_id(ref)
        spacing = float(row["spacing_mm"]) if row.get("spacing_mm") else spacing_mm
        samples.append(
            Sample(
                sample_id=ref,
                patient_id=patient,
                path=root / row["file"],
                laterality=_norm_laterality(row.get("laterality")),
                label=_norm_label(row["label"]),
                spacing_mm=spacing,
                kind="png",
            )
        )
    return samples


def _find_dicom(root: Path, rel: str) -> Path:
    """Locate a CBIS-DDSM image: the CSV path, else any DICOM under its first folder."""
    direct = root / rel
    if direct.is_file():
        return direct
    top = root / Path(rel).parts[0]
    if top.is_dir():
        found = sorted(top.rglob("*.dcm"))
        if found:
            return found[0]
    raise InvalidDatasetError(f"CBIS-DDSM image not found under {root}: {rel}")


def load_cbis_ddsm_csv(csv_path: Path, images_root: Path | None = None) -> list[Sample]:
    """Read an official CBIS-DDSM description CSV; one sample per full mammogram.

    CBIS-DDSM has no normal images: every image is abnormal (benign or malignant, the worst
    finding wins), so only the ``malignant`` task is meaningful.
    """
    rows = _read_csv(csv_path)
    missing = {"patient_id", "pathology", "image file path"} - set(rows[0])
    if missing:
        raise InvalidDatasetError(f"{csv_path}: missing CBIS-DDSM columns {sorted(missing)}")
    root = images_root if images_root is not None else csv_path.parent
    by_image: dict[str, Sample] = {}
    for row in rows:
        rel = row["image file path"].strip().strip('"')
        label = _norm_label(row["pathology"])
        previous = by_image.get(rel)
        if previous is not None and LABELS.index(previous.label) >= LABELS.index(label):
            continue
        by_image[rel] = Sample(
            sample_id=Path(rel).parts[0],
            patient_id=row["patient_id"],
            path=_find_dicom(root, rel),
            laterality=_norm_laterality(row.get("left or right breast")),
            label=label,
            spacing_mm=None,
            kind="dicom",
        )
    return list(by_image.values())


def load_dicom_folder(csv_path: Path, images_root: Path) -> list[Sample]:
    """Read a ``study_instance_uid,laterality,label`` CSV and match DICOMs in a folder."""
    import pydicom

    rows = _read_csv(csv_path)
    missing = {"study_instance_uid", "laterality", "label"} - set(rows[0])
    if missing:
        raise InvalidDatasetError(f"{csv_path}: missing columns {sorted(missing)}")
    index: dict[tuple[str, str | None], list[tuple[Path, str]]] = {}
    for path in sorted(p for p in images_root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        lat = dataset_laterality(ds)
        key = (str(ds.get("StudyInstanceUID", "")), lat)
        patient = dicom_patient_id(str(ds.get("PatientID", ""))) or key[0]
        index.setdefault(key, []).append((path, patient))
    samples = []
    for row in rows:
        lat = _norm_laterality(row["laterality"])
        matches = index.get((row["study_instance_uid"], lat), [])
        if not matches:
            raise InvalidDatasetError(
                f"no DICOM for study {row['study_instance_uid']} laterality {lat}"
            )
        for i, (path, patient) in enumerate(matches):
            samples.append(
                Sample(
                    sample_id=f"{row['study_instance_uid']}-{lat}-{i}",
                    patient_id=patient,
                    path=path,
                    laterality=lat,
                    label=_norm_label(row["label"]),
                    kind="dicom",
                )
            )
    return samples


def detect_layout(csv_path: Path) -> Layout:
    """Guess the layout from the CSV header."""
    columns = set(_read_csv(csv_path)[0])
    if {"refnum", "file", "label"} <= columns:
        return "mias"
    if "image file path" in columns:
        return "cbis-ddsm"
    if "study_instance_uid" in columns:
        return "dicom"
    raise InvalidDatasetError(f"{csv_path}: unrecognised labels layout (columns {sorted(columns)})")


def load_samples(
    csv_path: Path, images_root: Path | None = None, layout: Layout = "auto"
) -> list[Sample]:
    """Load samples of any supported layout."""
    chosen = detect_layout(csv_path) if layout == "auto" else layout
    if chosen == "mias":
        return load_mias_csv(csv_path, images_root)
    if chosen == "cbis-ddsm":
        return load_cbis_ddsm_csv(csv_path, images_root)
    return load_dicom_folder(csv_path, images_root if images_root is not None else csv_path.parent)


def subsample_by_patient(
    samples: Sequence[Sample], max_images: int, task: Task, seed: int
) -> list[Sample]:
    """Keep whole patients, about ``max_images`` images, positives and negatives balanced."""
    rng = np.random.default_rng(seed)
    patients: dict[str, list[Sample]] = {}
    for s in samples:
        patients.setdefault(s.patient_id, []).append(s)
    pos = [p for p, ss in patients.items() if any(target(s.label, task) for s in ss)]
    positive = set(pos)
    neg = [p for p in patients if p not in positive]
    rng.shuffle(pos)
    rng.shuffle(neg)
    order = [p for pair in zip(pos, neg, strict=False) for p in pair]
    order += pos[len(neg) :] + neg[len(pos) :]
    kept: list[Sample] = []
    for p in order:
        if len(kept) >= max_images:
            break
        kept.extend(patients[p])
    return kept


def patient_folds(
    samples: Sequence[Sample], task: Task, n_folds: int, seed: int
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Stratified k-fold by patient: (train indices, validation indices) per fold."""
    groups = np.array([s.patient_id for s in samples])
    y = targets(samples, task)
    n_pos_patients = len(set(groups[y == 1]))
    n_neg_patients = len(set(groups) - set(groups[y == 1]))
    if n_folds < 2 or min(n_pos_patients, n_neg_patients) < n_folds:
        raise InvalidDatasetError(
            f"{n_folds} folds need at least {n_folds} positive and negative patients "
            f"(have {n_pos_patients} and {n_neg_patients})"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    x = np.zeros((len(samples), 1))
    return [
        (np.asarray(tr, dtype=np.int64), np.asarray(va, dtype=np.int64))
        for tr, va in splitter.split(x, y, groups)
    ]


def read_pixels(sample: Sample) -> npt.NDArray[np.float32]:
    """Raw pixels of a PNG sample as float32 (2-D)."""
    if not sample.path.is_file():
        raise InvalidDatasetError(f"image not found: {sample.path}")
    with Image.open(sample.path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1)
    return arr.astype(np.float32)


_CACHE: dict[tuple[str, str | None, float | None, float, tuple[int, int]], Preprocessed] = {}


def preprocess_sample(sample: Sample, spacing_mm: float, size: tuple[int, int]) -> Preprocessed:
    """The model input of one sample through the node's preprocessing (cached in memory)."""
    key = (str(sample.path), sample.laterality, sample.spacing_mm, spacing_mm, size)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    config = PreprocessConfig(spacing_mm=spacing_mm, size=size)
    if sample.kind == "dicom":
        import pydicom

        result = preprocess_dataset(pydicom.dcmread(sample.path), config)
    else:
        result = preprocess_array(
            read_pixels(sample),
            laterality=sample.laterality,
            spacing_mm=sample.spacing_mm,
            config=config,
        )
    _CACHE[key] = result
    return result


def preprocess_samples(
    samples: Iterable[Sample],
    spacing_mm: float,
    size: tuple[int, int],
    progress: bool = True,
) -> npt.NDArray[np.float32]:
    """Stack the preprocessed images of samples into an (N, 1, H, W) float32 array."""
    items = list(samples)
    arrays = [
        np.asarray(preprocess_sample(s, spacing_mm, size).image, dtype=np.float32).reshape(1, *size)
        for s in tqdm(items, desc="preprocess", unit="img", disable=not progress)
    ]
    return np.stack(arrays).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Lesion:
    """A mini-MIAS finding: centre (column, row) and radius in 512-pixel image coordinates."""

    refnum: str
    severity: str
    col: float
    row: float
    radius: float


def load_mias_lesions(csv_path: Path, full_size: int = 1024, size: int = 512) -> list[Lesion]:
    """Findings with a centre from ``mias_abnormalities.csv``, in ``size``-pixel coordinates.

    MIAS measures x, y from the bottom-left corner of the 1024-pixel film, so y is flipped.
    """
    scale = size / full_size
    lesions = []
    for row in _read_csv(csv_path):
        if not row.get("x") or not row.get("y"):
            continue
        lesions.append(
            Lesion(
                refnum=row["refnum"],
                severity=row.get("severity", ""),
                col=float(row["x"]) * scale,
                row=(full_size - float(row["y"])) * scale,
                radius=float(row.get("radius") or 0.0) * scale,
            )
        )
    return lesions


def mias_finding_counts(csv_path: Path) -> dict[str, int]:
    """Findings per film in ``mias_abnormalities.csv``, with or without a centre."""
    counts: dict[str, int] = {}
    for row in _read_csv(csv_path):
        if (row.get("abnormality") or "").upper() != "NORM":
            counts[row["refnum"]] = counts.get(row["refnum"], 0) + 1
    return counts


#: (row, col, radius, malignant) of a lesion on the model grid.
LesionPoint = tuple[float, float, float, bool]


def lesion_points(
    samples: Sequence[Sample],
    lesions: Sequence[Lesion],
    spacing_mm: float,
    size: tuple[int, int],
) -> list[list[LesionPoint]]:
    """Per sample, lesion (row, col, radius, malignant) on the model grid, via the record."""
    by_ref: dict[str, list[Lesion]] = {}
    for lesion in lesions:
        by_ref.setdefault(lesion.refnum, []).append(lesion)
    out: list[list[LesionPoint]] = []
    for sample in samples:
        found = by_ref.get(sample.sample_id, [])
        if not found:
            out.append([])
            continue
        record = preprocess_sample(sample, spacing_mm, size).record
        points = []
        for lesion in found:
            row, col = record.source_to_model(lesion.row, lesion.col)
            radius = lesion.radius * float(np.mean(record.scale))
            points.append((row, col, radius, lesion.severity.upper() == "M"))
        out.append(points)
    return out
