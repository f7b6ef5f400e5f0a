"""Keeping patient data out of text: logs, audit details, job errors.

Exception messages of pydicom and highdicom quote the offending value (``Unable to convert
'1907-11-23' to 'DA' object``), and pydicom logs and warns with the value when it reads an
invalid one. The node therefore never stores or logs a foreign exception's message: it says
the exception's type, where it was raised, and which element is invalid in what way
(:func:`invalid_values`), never the value. :func:`guard_logs` withholds quoted values in every
log record of the libraries and strips messages from every logged traceback.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from pydicom import config
from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import VR, PersonName, validate_value

WITHHELD = "<value withheld>"
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
"""Quoted parts, over line breaks too: a value may hold one (a peer's AE title did)."""
_VRS = frozenset(VR)
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})
_OWN_LOGGERS = ("cad_node",)
"""Loggers whose messages are ours: they never carry patient data, so are left as they are."""


def _withhold(match: re.Match[str]) -> str:
    quoted = match.group()[1:-1]
    if quoted in _VRS or (quoted.isalnum() and keyword_dict.get(quoted) is not None):
        return match.group()  # a VR or an attribute keyword, never a value
    return WITHHELD


def withhold_values(text: str) -> str:
    """``text`` with quoted parts withheld: libraries quote the values they complain of.

    Quoted VRs and attribute keywords (``'DA'``, ``"PatientName"``) are kept.
    """
    return _QUOTED.sub(_withhold, text)


def _innermost(tb: TracebackType | None) -> TracebackType | None:
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def describe_exception(exc: BaseException) -> str:
    """The exception's type and where it was raised, without its message.

    E.g. ``ValueError in pydicom.valuerep.__new__``.
    """
    tb = _innermost(exc.__traceback__)
    if tb is None:
        return type(exc).__name__
    module = tb.tb_frame.f_globals.get("__name__", "?")
    return f"{type(exc).__name__} in {module}.{tb.tb_frame.f_code.co_name}"


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return chain[::-1]


def traceback_text(exc: BaseException) -> str:
    """A traceback of ``exc`` and its causes: frames and exception types, no messages."""
    parts = []
    for link in _chain(exc):
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(link.__traceback__))
        kind = type(link)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        parts.append(f"{name}: {WITHHELD}\n")
    return "".join(parts).rstrip("\n")


def _problem(vr: str, value: Any) -> str | None:
    """The kind of problem of one value with its VR, or None when it is valid."""
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    for single in values:
        if isinstance(single, PersonName):  # pydicom takes any PersonName as valid
            single = str(single)
        elif vr in ("DS", "IS") and not isinstance(single, str | bytes):  # DSfloat, IS...
            single = getattr(single, "original_string", None) or str(single)
        try:
            validate_value(vr, single, config.RAISE)
        except Exception as exc:  # its message quotes the value: only its wording is used
            text = str(exc)
            if text.startswith("A value of type"):
                return f"value of the wrong type for VR {vr}"
            if "number of PN components" in text:
                return "more than 3 name component groups"
            if "length" in text:
                return f"longer than VR {vr} allows"
            return f"not a valid {vr} value"
    return None


def _walk(ds: Dataset, prefix: str) -> Iterator[str]:
    for tag in list(ds.keys()):  # each converted on its own: one bad element stops nothing
        if tag.group == 0x7FE0:  # pixel data
            continue
        try:
            elem = ds[tag]
        except Exception as exc:  # an element that cannot even be converted
            yield f"{prefix}{tag} cannot be read ({type(exc).__name__})"
            continue
        name = f"{prefix}{elem.keyword or 'private'} {elem.tag}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from _walk(item, f"{prefix}{elem.keyword or elem.tag}[{i}].")
        elif elem.VR not in _BULK_VRS:
            problem = _problem(elem.VR, elem.value)
            if problem:
                yield f"{name}: {problem}"


def invalid_values(datasets: Iterable[Dataset], limit: int = 10) -> list[str]:
    """Elements whose values break their VR, as ``keyword (gggg,eeee): kind of problem``.

    Recurses into sequences; each element is named once however many datasets share the
    problem, and at most ``limit`` are listed. The values themselves are never returned.
    """
    found: list[str] = []
    for ds in datasets:
        for problem in _walk(ds, ""):
            if problem not in found:
                found.append(problem)
                if len(found) >= limit:
                    return found
    return found


_installed = False


def guard_logs() -> None:
    """Withhold patient data in every log record from now on (idempotent, process-wide).

    Records of libraries (pydicom, highdicom, pynetdicom, Celery...) have their quoted parts
    withheld; every record's traceback keeps its frames and exception types but loses the
    messages. Python warnings are covered once :func:`logging.captureWarnings` routes them
    to the ``py.warnings`` logger (the CLI does).
    """
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def guarded_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if not record.name.startswith(_OWN_LOGGERS):
            try:
                message = record.getMessage()
            except Exception:  # a malformed library record: keep nothing of its arguments
                message = str(record.msg)
            record.msg, record.args = withhold_values(message), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = traceback_text(record.exc_info[1])
        return record

    logging.setLogRecordFactory(guarded_record)
