"""The checks of a received instance (ingest/validate.py), on real files from the factories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from factories import mammogram, write
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid

from cad_node.errors import (
    MissingUidError,
    PixelDataError,
    SopClassMismatchError,
    UndecodableDatasetError,
    UndecodablePixelDataError,
    UnreadableElementError,
)
from cad_node.ingest.validate import (
    check_elements,
    check_pixel_data,
    check_pixels_decode,
    check_uids,
    expected_native_length,
    read_header,
)
from cad_node.sop_classes import MAMMOGRAPHY_FOR_PROCESSING

_PIXEL_DATA = 0x7FE00010


def _header(ds: Dataset, tmp_path: Path) -> tuple[Dataset, Path]:
    path = write(ds, tmp_path)
    return read_header(path), path


def test_a_valid_file_passes_every_check_with_its_pixels_left_on_disk(tmp_path: Path) -> None:
    big = mammogram(rows=256, cols=192)  # 96 KiB of pixels: above the deferral size
    ds, path = _header(big, tmp_path)
    assert isinstance(ds.get_item(_PIXEL_DATA, keep_deferred=True), RawDataElement)
    check_uids(ds, sop_class_uid=big.SOPClassUID, sop_instance_uid=big.SOPInstanceUID)
    check_pixel_data(ds)
    check_pixels_decode(ds, path)
    assert expected_native_length(ds) == 256 * 192 * 2


def test_a_file_cut_inside_its_pixel_data_is_refused_as_undecodable(tmp_path: Path) -> None:
    path = write(mammogram(rows=256, cols=192), tmp_path)
    os.truncate(path, path.stat().st_size - 1000)
    with pytest.raises(UndecodableDatasetError, match="beyond the end"):
        read_header(path)


def test_a_file_that_is_not_dicom_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("a text file sent as an image")
    with pytest.raises(UndecodableDatasetError, match="cannot be parsed"):
        read_header(path)


def _with_unknown_vr(ds: Dataset, tmp_path: Path, element: bytes, vr: bytes) -> Path:
    """Write ``ds``, then give one element (its tag, VR and length bytes) an unknown VR."""
    path = write(ds, tmp_path)
    data = path.read_bytes()
    assert data.count(element) == 1
    path.write_bytes(data.replace(element, element[:4] + vr + element[6:]))
    return path


def test_an_unreadable_value_names_its_tag_and_vr_but_not_the_value(tmp_path: Path) -> None:
    ds = mammogram()
    ds.PixelSpacing = ["0.1234", "0.5678"]
    element = b"\x28\x00\x30\x00DS\x0e\x000.1234\\0.5678 "  # (0028,0030) DS, length 14
    path = _with_unknown_vr(ds, tmp_path, element, b"ZZ")
    with pytest.raises(UnreadableElementError, match=r"\(0028,0030\) with VR 'ZZ'") as caught:
        read_header(path)
    assert "0.5678" not in str(caught.value)


def test_an_unreadable_value_inside_a_sequence_is_found(tmp_path: Path) -> None:
    item = Dataset()
    item.SliceThickness = "0.9876"
    ds = mammogram()
    ds.ReferencedStudySequence = [item]
    element = b"\x18\x00\x50\x00DS\x06\x000.9876"  # (0018,0050) DS, length 6
    path = _with_unknown_vr(ds, tmp_path, element, b"QQ")
    with pytest.raises(UnreadableElementError, match=r"\(0018,0050\) with VR 'QQ'"):
        read_header(path)
    check_elements(ds)  # the same walk passes the dataset as written


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ds: delattr(ds, "SeriesInstanceUID"), "SeriesInstanceUID is missing"),
        (lambda ds: setattr(ds, "StudyInstanceUID", ""), "StudyInstanceUID is missing"),
        (lambda ds: setattr(ds, "StudyInstanceUID", "1.2.abc"), "not a valid UID"),
        (
            lambda ds: setattr(ds, "StudyInstanceUID", ["1.2.3", "1.2.4"]),
            "StudyInstanceUID has 2 values",
        ),
        (
            lambda ds: ds.__setitem__(0x0020000D, DataElement(0x0020000D, "US", 1)),
            "StudyInstanceUID has VR US",
        ),
    ],
)
def test_identifying_uids_must_be_single_valid_uis(change: object, message: str) -> None:
    ds = mammogram()
    sop_class, sop_instance = ds.SOPClassUID, ds.SOPInstanceUID
    change(ds)  # type: ignore[operator]
    with pytest.raises(MissingUidError, match=message):
        check_uids(ds, sop_class_uid=sop_class, sop_instance_uid=sop_instance)


def test_uids_that_differ_from_the_request_are_a_mismatch() -> None:
    ds = mammogram()
    with pytest.raises(SopClassMismatchError, match="SOPInstanceUID"):
        check_uids(ds, sop_class_uid=ds.SOPClassUID, sop_instance_uid=generate_uid())
    with pytest.raises(SopClassMismatchError, match="SOPClassUID"):
        check_uids(ds, sop_class_uid=MAMMOGRAPHY_FOR_PROCESSING, sop_instance_uid=ds.SOPInstanceUID)


def test_pixel_data_missing_or_shorter_than_the_attributes_say_is_refused(tmp_path: Path) -> None:
    ds = mammogram(rows=64, cols=48)
    ds.PixelData = ds.PixelData[:-100]
    header, _ = _header(ds, tmp_path)
    with pytest.raises(PixelDataError, match=f"truncated: {64 * 48 * 2 - 100} of {64 * 48 * 2}"):
        check_pixel_data(header)
    del ds.PixelData
    with pytest.raises(PixelDataError, match="no pixel data"):
        check_pixel_data(ds)


def test_native_pixels_with_impossible_attributes_do_not_decode(tmp_path: Path) -> None:
    ds = mammogram()
    ds.BitsStored = 20  # more than the 16 bits allocated
    header, path = _header(ds, tmp_path)
    check_pixel_data(header)  # long enough
    with pytest.raises(UndecodablePixelDataError, match="native pixel data cannot be decoded"):
        check_pixels_decode(header, path)


def test_rle_pixels_are_decoded_in_full(tmp_path: Path) -> None:
    ds = mammogram(rows=64, cols=48)
    ds.compress(RLELossless)
    header, path = _header(ds, tmp_path)
    check_pixel_data(header)
    check_pixels_decode(header, path)
    broken = mammogram(rows=64, cols=48)
    broken.compress(RLELossless)
    frame = bytearray(broken.PixelData)
    frame[-200:] = b"\x00" * 200  # the last segments' runs no longer add up
    broken.PixelData = bytes(frame)
    header, path = _header(broken, tmp_path / "broken")
    with pytest.raises(UndecodablePixelDataError):
        check_pixels_decode(header, path)
