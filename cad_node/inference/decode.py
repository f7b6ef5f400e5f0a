"""Pixel decoding shared by ingest and analysis, so that both agree on what decodes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

from cad_node.errors import UndecodablePixelDataError
from cad_node.phi import withhold_values

_quiet = threading.local()


class _NoPluginTracebacks(logging.Filter):
    """Drop pydicom's traceback of each failed decoding plugin inside :func:`_quiet_decoders`.

    The failure is raised to the caller, who reports it in one line; bad input is expected.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and getattr(_quiet, "active", False))


logging.getLogger("pydicom.pixels.decoders.base").addFilter(_NoPluginTracebacks())


@contextmanager
def _quiet_decoders() -> Iterator[None]:
    _quiet.active = True
    try:
        yield
    finally:
        _quiet.active = False


def decode_first_frame(ds: Dataset, path: Path | None = None) -> npt.NDArray[Any]:
    """The first frame's stored values, decoded as analysis decodes them.

    With ``path`` (the file ``ds`` was read from) the frame is read from the file and only its
    bytes are loaded; otherwise from the dataset's pixel data (all frames are loaded).

    Raises:
        UndecodablePixelDataError: the pixel data cannot be decoded.
    """
    try:
        with _quiet_decoders():
            if path is not None:
                return pixel_array(path, index=0)
            frames = int(ds.get("NumberOfFrames") or 1)
            return pixel_array(ds, index=0) if frames > 1 else pixel_array(ds)
    except BaseException as exc:  # the decoders raise many unrelated types
        # pylibjpeg-rle panics on some corrupt segments: a pyo3 PanicException, which derives
        # from BaseException so that pydicom does not try its next plugin; still a bad image
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        # decoder messages speak of lengths, tags and codestreams, never of patient data;
        # "all plugins failed" lists each plugin's reason on a line of its own
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # decoder messages speak of lengths, tags and codestreams; anything quoted is withheld
        reason = withhold_values(" ".join(lines)[:200]) if lines else type(exc).__name__
        raise UndecodablePixelDataError(
            f"pixel data cannot be decoded (transfer syntax {_transfer_syntax_name(ds)}): {reason}"
        ) from exc


def _transfer_syntax_name(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(getattr(uid, "name", uid)) if uid is not None else "unknown"
