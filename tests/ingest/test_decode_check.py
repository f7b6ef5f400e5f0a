"""Ingest refuses what analysis could not read: unreadable elements, pixel data that does not
decode. Real associations on loopback; each refusal is audited and the node serves on."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from factories import mammogram, write
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLSLossless, RLELossless
from scu import store

from cad_node import dicom_status
from cad_node.node import Node


def _rejection(node: Node, sop_uid: str) -> str:
    [event] = [
        e
        for e in node.repo.recent_events(level="warning")
        if e.kind == "instance.rejected" and e.sop_instance_uid == sop_uid
    ]
    return str(event.detail)


def _refused_and_serving(node: Node, bad: Dataset | Path, sop_uid: str, status: int) -> str:
    """``bad`` is answered ``status``, not stored, audited; a good image after it is stored."""
    good = mammogram()
    assert store(node.scp.port, [bad]) == [status]
    assert store(node.scp.port, [good]) == [dicom_status.SUCCESS]
    assert not node.repo.is_stored(sop_uid)
    assert node.repo.is_stored(good.SOPInstanceUID)
    return _rejection(node, sop_uid)


def _rle(ds: Dataset) -> Dataset:
    ds.compress(RLELossless)
    return ds


@pytest.mark.parametrize(
    ("syntax", "options"),
    [(JPEGLSLossless, {}), (JPEG2000, {"j2k_cr": [10]}), (RLELossless, {})],
    ids=["jpeg-ls", "jpeg2000-lossy", "rle"],
)
def test_valid_codestreams_pass_the_check(
    node: Node, syntax: str, options: dict[str, object]
) -> None:
    ds = mammogram(rows=300, cols=200)
    ds.compress(syntax, **options)
    assert store(node.scp.port, [ds]) == [dicom_status.SUCCESS]


def test_rle_with_garbage_fragments_is_refused(node: Node) -> None:
    ds = _rle(mammogram())
    garbage = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([garbage])
    detail = _refused_and_serving(
        node, ds, ds.SOPInstanceUID, dicom_status.CANNOT_UNDERSTAND_PIXEL_ENCODING
    )
    assert "cannot be decoded" in detail


def test_rle_with_a_valid_header_but_corrupt_segments_is_refused(node: Node) -> None:
    """Only a full decode finds this: the header is the encoder's, the runs are noise."""
    ds = _rle(mammogram(rows=128, cols=128))
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    noise = np.random.default_rng(2).integers(0, 256, len(frame) - 64, dtype=np.uint8)
    ds.PixelData = encapsulate([frame[:64] + noise.tobytes()])
    _refused_and_serving(node, ds, ds.SOPInstanceUID, dicom_status.CANNOT_UNDERSTAND_PIXEL_ENCODING)


def test_decode_failures_log_one_line_without_a_traceback(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _rle(mammogram())
    ds.PixelData = encapsulate([b"\x00" * 64 + b"\x7f" * 100])
    with caplog.at_level(logging.WARNING):
        assert store(node.scp.port, [ds]) == [dicom_status.CANNOT_UNDERSTAND_PIXEL_ENCODING]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert any(ds.SOPInstanceUID in r.getMessage() for r in caplog.records)


def test_jpeg2000_whose_header_contradicts_the_dataset_is_refused(node: Node) -> None:
    ds = mammogram(rows=64, cols=48)
    ds.compress(JPEG2000Lossless)
    ds.Rows = 128  # the codestream is 64 rows high
    detail = _refused_and_serving(
        node, ds, ds.SOPInstanceUID, dicom_status.CANNOT_UNDERSTAND_PIXEL_ENCODING
    )
    assert "64 x 48" in detail


def test_truncated_jpeg2000_codestream_is_refused(node: Node) -> None:
    ds = mammogram(rows=64, cols=48)
    ds.compress(JPEG2000Lossless)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    detail = _refused_and_serving(
        node, ds, ds.SOPInstanceUID, dicom_status.CANNOT_UNDERSTAND_PIXEL_ENCODING
    )
    assert "end marker" in detail


def test_native_pixel_data_pydicom_would_not_decode_is_refused(node: Node) -> None:
    """Long enough for its attributes, but 12 bits allocated is no layout pydicom decodes."""
    ds = mammogram()
    ds.BitsAllocated = 12
    detail = _refused_and_serving(
        node, ds, ds.SOPInstanceUID, dicom_status.CANNOT_UNDERSTAND_PIXEL_ENCODING
    )
    assert "Bits Allocated" in detail


def test_unknown_vr_is_cannot_understand_not_processing_failure(node: Node, tmp_path: Path) -> None:
    ds = mammogram()
    path = write(ds, tmp_path)
    raw = path.read_bytes()
    bits_allocated = b"\x28\x00\x00\x01US\x02\x00"  # (0028,0100) US, length 2
    assert raw.count(bits_allocated) == 1
    path.write_bytes(raw.replace(bits_allocated, b"\x28\x00\x00\x01ZZ\x02\x00"))
    detail = _refused_and_serving(
        node, path, ds.SOPInstanceUID, dicom_status.CANNOT_UNDERSTAND_ELEMENT_VALUE
    )
    assert "(0028,0100)" in detail and "'ZZ'" in detail


def test_unknown_vr_inside_a_sequence_is_refused(node: Node, tmp_path: Path) -> None:
    ds = mammogram()
    code = ds.ViewCodeSequence[0]
    code.CodeValue = "R-10224"  # distinctive bytes to find in the file
    path = write(ds, tmp_path)
    raw = path.read_bytes()
    code_value = b"\x08\x00\x00\x01SH\x08\x00R-10224 "  # (0008,0100) SH, padded to 8
    assert raw.count(code_value) == 1
    path.write_bytes(raw.replace(code_value, b"\x08\x00\x00\x01QQ\x08\x00R-10224 "))
    _refused_and_serving(
        node, path, ds.SOPInstanceUID, dicom_status.CANNOT_UNDERSTAND_ELEMENT_VALUE
    )


def test_invalid_patient_birth_date_is_accepted(node: Node) -> None:
    """A wrong DA value does not stop analysis (results leave it empty): Success."""
    ds = mammogram()
    ds.add(DataElement(0x00100030, "DA", "1907-11-23", validation_mode=config.IGNORE))
    assert store(node.scp.port, [ds]) == [dicom_status.SUCCESS]
