"""One error hierarchy for the whole node.

Every error says whether retrying can help (``retryable``). Adapters translate errors at the
edge: the C-STORE handler into a DICOM status, workers into a retry or a terminal failure.
Messages never carry patient data.
"""

from __future__ import annotations


class CadNodeError(Exception):
    """Base class of every error the node raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ConfigError(CadNodeError):
    """The settings are invalid or inconsistent."""


class InvalidDatasetError(CadNodeError):
    """An instance cannot be understood: unreadable encoding, missing UIDs, bad pixel data."""


class SopClassMismatchError(InvalidDatasetError):
    """The dataset's SOP class or instance differs from what the C-STORE request announced."""


class OutOfResourcesError(CadNodeError):
    """The node cannot store now (disk full or below its reserve); the peer may retry later."""

    retryable = True


class ModelError(CadNodeError):
    """A model is missing, malformed, or its weights fail their checksum."""


class NotAnalysableError(CadNodeError):
    """An image is valid DICOM but not something the model may analyse (and why)."""


class DeliveryError(CadNodeError):
    """Sending results to a destination failed."""

    retryable = True


class UndecodableDatasetError(InvalidDatasetError):
    """The byte stream is not a parseable DICOM dataset."""


class UnreadableElementError(UndecodableDatasetError):
    """An element's value cannot be read: an unknown VR, or a value its VR cannot hold."""


class MissingUidError(InvalidDatasetError):
    """A required UID is missing or malformed (wrong VR, more than one value, invalid UID)."""


class PatientConflictError(InvalidDatasetError):
    """An instance names another patient (PatientID or issuer) than its study already has.

    Also raised when a study's stored instances turn out to name more than one patient: such a
    study is never analysed.
    """


class PixelDataError(InvalidDatasetError):
    """Pixel data is absent, truncated or inconsistent with the image attributes."""


class UndecodablePixelDataError(PixelDataError):
    """The pixel data's codestream does not decode (or its header contradicts the dataset)."""


class ReportingError(CadNodeError):
    """An analysis and its sources cannot be turned into result objects."""


class UnknownStudyError(CadNodeError):
    """No study with this Study Instance UID is recorded."""


class DuplicateInstanceError(CadNodeError):
    """The SOP instance is stored already: the audit repository raises it, ingest answers the
    C-STORE as a duplicate (Success, keeping the first copy)."""


class StaleJobError(CadNodeError):
    """A worker tried to finish an attempt that is no longer the job's current one (it was
    presumed dead and its task redelivered); its results are discarded, so never retryable."""


class ReanalysisRefusedError(CadNodeError):
    """A study cannot be analysed again now (still receiving, or a job of it is under way).

    ``reason`` is ``receiving`` or ``busy``, for adapters that answer with a fixed message.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
