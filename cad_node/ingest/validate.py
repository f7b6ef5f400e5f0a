"""Checks of a received instance, before anything is acknowledged.

The header is read with the pixel data left on disk, and every element's value is read the way
analysis will read it. The first frame's pixel data is then checked to decode as analysis will
decode it: native data by pydicom's own checks of the image attributes plus its length
(decoding it is a reshape); RLE in full (a 4500 x 2800 16-bit mammogram takes about 50 ms);
JPEG, JPEG-LS and JPEG 2000 by their codestream header and end marker (a full decode would
cost hundreds of ms). Only the first frame is read: it is the one analysis decodes, and a
multi-frame tomosynthesis object can be gigabytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.pixels.utils import _get_jpg_parameters, as_pixel_options
from pydicom.uid import UID, JPEG2000TransferSyntaxes, RLELossless

from cad_node.errors import (
    MissingUidError,
    PixelDataError,
    SopClassMismatchError,
    UndecodableDatasetError,
    UndecodablePixelDataError,
    UnreadableElementError,
)
from cad_node.inference.decode import decode_first_frame

_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def read_header(path: Path) -> Dataset:
    """Parse a received file without loading its pixel data; read every other value.

    Raises :class:`UndecodableDatasetError` when the file is not a parseable dataset
    (:class:`UnreadableElementError` when one of its values cannot be read).
    """
    try:
        # defer_size keeps large values (the pixels) on disk while still walking past them,
        # so a stream that ends early is noticed here.
        ds = dcmread(path, defer_size=4096)
        _check_values_within_file(ds, path.stat().st_size)
        for keyword in _REQUIRED_UIDS:  # convert now, so a malformed value fails here
            ds.get(keyword)
        check_elements(ds)
    except UndecodableDatasetError:
        raise
    except Exception as exc:  # pydicom raises many types for broken streams
        raise UndecodableDatasetError(f"dataset cannot be parsed ({type(exc).__name__})") from exc
    return ds


def _check_values_within_file(ds: Dataset, size: int) -> None:
    """No value claims bytes beyond the end: deferred values are skipped by seeking, and a
    value read at once (small pixel data) comes back short without an error."""
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset would read deferred values
        elem = ds.get_item(tag, keep_deferred=True)
        if (
            isinstance(elem, RawDataElement)
            and elem.length != _UNDEFINED_LENGTH
            and elem.value_tell + elem.length > size
        ):
            raise UndecodableDatasetError(
                f"element {tag} claims {elem.length} bytes beyond the end of the stream"
            )


def check_elements(ds: Dataset) -> None:
    """Every element's value (pixel data aside), in sequences too, reads as analysis reads it.

    Raises :class:`UnreadableElementError` naming the tag and VR, never the value.
    """
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset would hide which tag failed
        if tag.group == 0x7FE0:  # pixel data: checked by decoding it
            continue
        vr = str(getattr(ds.get_item(tag, keep_deferred=True), "VR", "?"))[:2]
        try:
            elem = ds[tag]  # converts the raw value (reading it from disk when deferred)
            items = list(elem.value) if elem.VR == "SQ" and elem.value else []
        except Exception as exc:  # pydicom raises many types; its messages quote values
            raise UnreadableElementError(
                f"element {tag} with VR {vr!r} cannot be read ({type(exc).__name__})"
            ) from exc
        for item in items:
            check_elements(item)


def check_uids(ds: Dataset, *, sop_class_uid: str, sop_instance_uid: str) -> None:
    """The four identifying UIDs are present, of VR UI, single and valid, and match the request.

    A UID sent with another VR (explicit VR keeps it) would otherwise be read as a number: a
    StudyInstanceUID of VR US and value 1 became study "1", shared by unrelated patients.
    """
    for keyword in _REQUIRED_UIDS:
        if keyword not in ds:
            raise MissingUidError(f"{keyword} is missing")
        elem = ds[keyword]
        if elem.VR != "UI":
            raise MissingUidError(f"{keyword} has VR {elem.VR}, not UI")
        value = elem.value
        if not value:
            raise MissingUidError(f"{keyword} is missing")
        if not isinstance(value, str):
            raise MissingUidError(f"{keyword} has {len(value)} values, not one")
        if not UID(value).is_valid:
            raise MissingUidError(f"{keyword} is not a valid UID")
    if str(ds.SOPInstanceUID) != sop_instance_uid:
        raise SopClassMismatchError("SOPInstanceUID differs from the C-STORE request")
    if str(ds.SOPClassUID) != sop_class_uid:
        raise SopClassMismatchError("SOPClassUID differs from the C-STORE request")


def expected_native_length(ds: Dataset) -> int:
    """Bytes of uncompressed pixel data the image attributes call for."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise PixelDataError("Rows, Columns or BitsAllocated missing") from exc
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    total_bits = rows * cols * samples * frames * bits
    return (total_bits + 7) // 8


def check_pixel_data(ds: Dataset) -> None:
    """Pixel data is present and, when uncompressed, as long as the attributes say."""
    if _PIXEL_DATA not in ds:
        raise PixelDataError("no pixel data")
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if isinstance(elem, RawDataElement):  # deferred: still on disk
        length, undefined = elem.length, elem.length == _UNDEFINED_LENGTH
    else:  # small enough to have been read
        length, undefined = len(elem.value or b""), bool(elem.is_undefined_length)
    if undefined:
        if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
            raise PixelDataError("undefined-length pixel data in a native transfer syntax")
        return
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        raise PixelDataError("encapsulated transfer syntax but native pixel data")
    expected = expected_native_length(ds)
    if length < expected:
        raise PixelDataError(f"pixel data truncated: {length} of {expected} bytes")


_END_OF_IMAGE = b"\xff\xd9"
"""JPEG's EOI, JPEG-LS's, and JPEG 2000's EOC: the last marker of a complete codestream."""


def check_pixels_decode(ds: Dataset, path: Path) -> None:
    """The first frame decodes (native, RLE), or its codestream header matches the image
    attributes and the codestream is complete (JPEG family).

    ``ds`` is :func:`read_header`'s dataset of ``path``. Raises
    :class:`UndecodablePixelDataError`.
    """
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_encapsulated:
        _check_native(ds, path)
    elif syntax == RLELossless:
        decode_first_frame(ds, path)
    else:
        _check_codestream(_first_frame(ds, path), ds, syntax)


def _check_native(ds: Dataset, path: Path) -> None:
    """pydicom's own checks before it decodes native pixel data, without reading the pixels.

    Decoding native data is a reshape of bytes already checked long enough; reading a 17 MB
    frame to do it would cost ~10 ms and find nothing more.
    """
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    runner = DecodeRunner(ds.file_meta.TransferSyntaxUID)
    try:
        with path.open("rb") as fh:
            # a file source: validate() checks the attributes, not the (deferred) bytes
            runner.set_source(fh)
            runner.set_options(**as_pixel_options(ds))
            runner.set_option("pixel_keyword", "PixelData")
            runner.set_option("pixel_vr", str(getattr(elem, "VR", "OW")))
            runner.validate()
            runner.pixel_dtype  # noqa: B018 - raises for a bit depth numpy cannot hold
    except Exception as exc:  # pydicom's messages name group 0028 values, not patient data
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UndecodablePixelDataError(f"native pixel data cannot be decoded: {reason}") from exc


def _first_frame(ds: Dataset, path: Path) -> bytes:
    """The encoded first frame, read from ``path`` when the pixel data is still on disk."""
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    frames = int(ds.get("NumberOfFrames") or 1)
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        if isinstance(elem, RawDataElement) and elem.value is None:
            with path.open("rb") as fh:
                fh.seek(elem.value_tell)
                return get_frame(fh, 0, number_of_frames=frames, extended_offsets=extended)
        return get_frame(ds.PixelData, 0, number_of_frames=frames, extended_offsets=extended)
    except Exception as exc:  # malformed items or offset tables
        raise UndecodablePixelDataError(
            f"the first frame cannot be found in the encapsulated pixel data ({exc})"
        ) from exc


def _codestream_header(frame: bytes, syntax: UID) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, precision) from a JPEG, JPEG-LS or JPEG 2000 header."""
    if syntax in JPEG2000TransferSyntaxes:
        siz = frame.find(b"\xff\x4f\xff\x51") + 2  # SOC then SIZ, also inside a JP2 wrapper
        if siz < 2 or len(frame) < siz + 41:
            return None
        x, y, x0, y0 = struct.unpack(">4I", frame[siz + 6 : siz + 22])
        (components,) = struct.unpack(">H", frame[siz + 38 : siz + 40])
        return y - y0, x - x0, components, (frame[siz + 40] & 0x7F) + 1
    info = _get_jpg_parameters(frame)
    if not {"height", "width", "components", "precision"} <= info.keys():
        return None
    return int(info["height"]), int(info["width"]), int(info["components"]), info["precision"]


def _check_codestream(frame: bytes, ds: Dataset, syntax: UID) -> None:
    header = _codestream_header(frame, syntax)
    if header is None:
        raise UndecodablePixelDataError(
            f"the first frame has no {syntax.name} codestream header ({len(frame)} bytes)"
        )
    rows, columns, components, precision = header
    try:
        expected = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1))
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise PixelDataError("Rows, Columns or BitsAllocated missing") from exc
    # a JPEG may leave its height to a later DNL marker (height 0 here)
    if (rows or expected[0], columns, components) != expected:
        raise UndecodablePixelDataError(
            f"the codestream is {rows} x {columns} with {components} component(s); the dataset "
            f"says {expected[0]} x {expected[1]} with {expected[2]}"
        )
    if precision > bits:
        raise UndecodablePixelDataError(
            f"the codestream has {precision}-bit samples; BitsAllocated is {bits}"
        )
    if _END_OF_IMAGE not in frame[-8:]:  # after at most a few padding bytes
        raise UndecodablePixelDataError("the first frame's codestream has no end marker")
