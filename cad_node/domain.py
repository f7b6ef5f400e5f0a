"""Value objects shared by every stage: views, lateralities, study and job states, and what
one stage hands the next (a stored file, a completed study, a result object)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class Laterality(enum.StrEnum):
    """Which breast an image shows."""

    LEFT = "L"
    RIGHT = "R"


class ViewPosition(enum.StrEnum):
    """The two standard screening projections the model analyses."""

    CC = "CC"
    MLO = "MLO"


class StudyState(enum.StrEnum):
    """Where a study is in its life; the audit database stores these values."""

    RECEIVING = "receiving"
    """Instances are arriving; the quiet-period timer runs."""
    COMPLETE = "complete"
    """No new instance for the quiet period; views are known."""


class InstanceOutcome(enum.StrEnum):
    """What the node answered to one C-STORE."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


def view_name(laterality: Laterality, position: ViewPosition) -> str:
    """The node's name for a view, e.g. ``"L-CC"``."""
    return f"{laterality.value}-{position.value}"


STANDARD_VIEWS: Final[tuple[str, ...]] = tuple(
    view_name(lat, pos) for lat in Laterality for pos in ViewPosition
)
"""``("L-CC", "L-MLO", "R-CC", "R-MLO")``: a complete screening exam."""


class JobState(enum.StrEnum):
    """Where a study's analysis job is."""

    QUEUED = "queued"
    RUNNING = "running"
    """Analysis (inference and encoding of the result objects) under way."""
    DELIVERING = "delivering"
    """Results are written to the outbox; sending to destinations."""
    DELIVERY_PENDING = "delivery_pending"
    """Analysed; a destination has not taken every object within the normal attempt budget
    (alerted). Retries go on at the capped interval until retention ends."""
    DONE = "done"
    """Every result object reached every destination (or there are no destinations)."""
    FAILED = "failed"
    """A terminal failure; ``error`` says why."""
    UNCHANGED = "unchanged"
    """The revision holds the same instances as the last analysed one: no new report."""


class DeliveryState(enum.StrEnum):
    """One result object for one destination."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    """Not delivered within retention; ``cad-node send --retry-failed`` tries again."""


# Kinds of result object, as recorded on jobs and deliveries.
MAMMO_CAD_SR: Final = "mammo-cad-sr"
TID1500_SR: Final = "tid1500-sr"
HEATMAP_SC: Final = "heatmap-sc"


@dataclass(frozen=True)
class StoredFile:
    """Where and what an instance's bytes are on disk (the spool's answer, recorded by audit)."""

    path: str
    bytes: int
    sha256: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class CompletedStudy:
    """A study that just completed, as handed to the pipeline."""

    study_instance_uid: str
    revision: int
    views: list[str]
    missing_views: list[str]


@dataclass(frozen=True)
class ResultObject:
    """A result object written to the outbox."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    path: str
    """Relative to the outbox directory."""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
