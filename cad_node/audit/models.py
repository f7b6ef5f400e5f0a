"""SQLAlchemy models of the audit database. No pixel data and no patient demographics.

The one trace of a patient is on :class:`Study`: salted digests of its PatientID and issuer,
which the C-STORE handler compares to refuse another patient's instance into the study.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID_LENGTH = 64
AE_LENGTH = 16
REQUESTED_BY_LENGTH = 128


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints stably."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Study(Base):
    """One study as the node sees it; views are filled in when it completes."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    """How many times the study completed with new content (a late image bumps it)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    views: Mapped[list[str]] = mapped_column(JSON, default=list)
    missing_views: Mapped[list[str]] = mapped_column(JSON, default=list)
    patient_salt: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """Random per study (hex), the key of the two digests below."""
    patient_id_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """HMAC-SHA256 (hex) of the PatientID of the study's first instance, never the value."""
    patient_issuer_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """HMAC-SHA256 (hex) of its IssuerOfPatientID. All three are NULL for studies recorded
    before the check existed; the next instance then sets them."""


class Instance(Base):
    """One C-STORE request and the node's answer; stored instances are unique by SOP UID."""

    __tablename__ = "instances"
    __table_args__ = (
        Index(
            "uq_instances_stored_sop_instance_uid",
            "sop_instance_uid",
            unique=True,
            sqlite_where=text("outcome = 'stored'"),
            postgresql_where=text("outcome = 'stored'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    """The DIMSE status the node answered."""
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    calling_ae: Mapped[str] = mapped_column(String(AE_LENGTH))
    peer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), nullable=True)
    sop_class_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), nullable=True)
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id"), nullable=True, index=True
    )
    series_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), nullable=True)
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), nullable=True)
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    laterality: Mapped[str | None] = mapped_column(String(1), nullable=True)
    view_position: Mapped[str | None] = mapped_column(String(16), nullable=True)
    view: Mapped[str | None] = mapped_column(String(8), nullable=True)
    not_analysed_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Relative to the spool directory."""
    revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """The study revision whose completion first included this instance (NULL while its
    study is receiving): the job of revision r analyses the instances of revision <= r."""


class Event(Base):
    """An append-only log of every state change and error."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    kind: Mapped[str] = mapped_column(String(48), index=True)
    level: Mapped[str] = mapped_column(String(8))
    study_instance_uid: Mapped[str | None] = mapped_column(
        String(UID_LENGTH), nullable=True, index=True
    )
    sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), nullable=True)
    calling_ae: Mapped[str | None] = mapped_column(String(AE_LENGTH), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class Job(Base):
    """One analysis of one study revision: the unit the pipeline queues, runs and retries."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("study_id", "revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The analysis (scores per view, breast and exam) as reported."""
    objects: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)
    """UIDs (study, series, SOP instance and class), kind and outbox path of each result
    object; a later revision's SRs reference these as predecessors."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    requested_by: Mapped[str | None] = mapped_column(String(REQUESTED_BY_LENGTH), nullable=True)
    """Who asked for this job by hand (a re-analysis); such a job runs even when its revision
    holds the same instances as the last analysed one. NULL for jobs of a completion."""


class Delivery(Base):
    """One result object for one destination, and what happened when it was sent."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    """``AE@host:port``."""
    kind: Mapped[str] = mapped_column(String(32))
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    path: Mapped[str] = mapped_column(Text)
    """Relative to the outbox directory."""
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


def new_event(
    kind: str,
    *,
    level: str = "info",
    detail: str | None = None,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    calling_ae: str | None = None,
    at: datetime | None = None,
) -> Event:
    """An event-log row (``at`` defaults to now)."""
    return Event(
        at=at or utcnow(),
        kind=kind,
        level=level,
        detail=detail,
        study_instance_uid=study_instance_uid,
        sop_instance_uid=sop_instance_uid,
        calling_ae=calling_ae,
    )
