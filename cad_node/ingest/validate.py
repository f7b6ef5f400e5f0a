"""Header checks of a received instance, before anything is acknowledged.

Reads only the header (pixel data is skipped, not loaded), so checks cost microseconds even
for 60 MB mammograms. Decoding the pixels is the inference stage's job.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from cad_node.errors import (
    MissingUidError,
    PixelDataError,
    SopClassMismatchError,
    UndecodableDatasetError,
)

_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def read_header(path: Path) -> Dataset:
    """Parse a received file without loading its pixel data.

    Raises :class:`UndecodableDatasetError` when the file is not a parseable dataset.
    """
    try:
        # defer_size keeps large values (the pixels) on disk while still walking past them,
        # so a stream that ends early is noticed here.
        ds = dcmread(path, defer_size=4096)
        _check_values_within_file(ds, path.stat().st_size)
        for keyword in _REQUIRED_UIDS:  # convert now, so a malformed value fails here
            ds.get(keyword)
    except UndecodableDatasetError:
        raise
    except Exception as exc:  # pydicom raises many types for broken streams
        raise UndecodableDatasetError(f"dataset cannot be parsed ({type(exc).__name__})") from exc
    return ds


def _check_values_within_file(ds: Dataset, size: int) -> None:
    """Deferred values are skipped by seeking; make sure none claims bytes beyond the end."""
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset would read deferred values
        elem = ds.get_item(tag, keep_deferred=True)
        if (
            isinstance(elem, RawDataElement)
            and elem.value is None
            and elem.length != _UNDEFINED_LENGTH
            and elem.value_tell + elem.length > size
        ):
            raise UndecodableDatasetError(
                f"element {tag} claims {elem.length} bytes beyond the end of the stream"
            )


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
