"""Synthetic DICOM mammograms for tests: real, valid datasets with controllable edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from cad_node.sop_classes import MAMMOGRAPHY_FOR_PRESENTATION, MAMMOGRAPHY_FOR_PROCESSING

VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


def mammogram(
    *,
    study_uid: str | None = None,
    laterality: str = "L",
    view: str = "CC",
    rows: int = 64,
    cols: int = 48,
    photometric: str = "MONOCHROME2",
    for_processing: bool = False,
    modality: str = "MG",
    with_view_position: bool = True,
    with_view_code: bool = True,
    sop_class: UID | None = None,
    seed: int = 0,
) -> Dataset:
    """A small 16-bit MG image; views and lateralities in the structured attributes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(rows, cols), dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if sop_class is None:
        sop_class = MAMMOGRAPHY_FOR_PROCESSING if for_processing else MAMMOGRAPHY_FOR_PRESENTATION
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYNTH-001"
    ds.Modality = modality
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.ImageLaterality = laterality
    if with_view_position:
        ds.ViewPosition = view
    if with_view_code and view in VIEW_CODES:
        code = Dataset()
        code.CodeValue, code.CodeMeaning = VIEW_CODES[view]
        code.CodingSchemeDesignator = "SCT"
        ds.ViewCodeSequence = [code]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.PixelData = pixels.tobytes()
    return ds


def four_views(study_uid: str | None = None, **kwargs: object) -> list[Dataset]:
    """L-CC, L-MLO, R-CC, R-MLO of one study."""
    study_uid = study_uid or generate_uid()
    return [
        mammogram(study_uid=study_uid, laterality=lat, view=view, seed=i, **kwargs)  # type: ignore[arg-type]
        for i, (lat, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")])
    ]


def write(ds: Dataset, folder: Path, name: str | None = None) -> Path:
    """Save as a DICOM file (with file meta) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{ds.SOPInstanceUID}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path
