"""Typed reads of the audit database: what the CLI, the web console and the demo show.

Frozen values, built by the repositories' query methods. ``to_dict`` gives the JSON shape that
``cad-node audit ... --json`` prints and the web API returns (``cad_node/web/schemas.py``);
that shape keeps its historical key ``status`` for a study's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cad_node.domain import DeliveryState, InstanceOutcome, JobState, StudyState


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _status(status: int | None) -> str | None:
    return f"0x{status:04X}" if status is not None else None


@dataclass(frozen=True)
class StudySummary:
    """One study as listed: state, revision, views, how many instances are stored."""

    study_instance_uid: str
    state: StudyState
    revision: int
    views: list[str]
    missing_views: list[str]
    n_instances: int
    created_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    calling_ae: str | None = None
    """The (first) calling AE that sent it; only the studies search fills it in."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (``status`` holds the state); without ``calling_ae``."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "status": self.state.value,
            "revision": self.revision,
            "views": list(self.views),
            "missing_views": list(self.missing_views),
            "n_instances": self.n_instances,
            "created_at": self.created_at.isoformat(),
            "last_received_at": self.last_received_at.isoformat(),
            "completed_at": _iso(self.completed_at),
        }


@dataclass(frozen=True)
class InstanceRecord:
    """One C-STORE as recorded: stored, duplicate or rejected, and why."""

    sop_instance_uid: str | None
    series_instance_uid: str | None
    sop_class_uid: str | None
    outcome: InstanceOutcome
    status: int
    """The DIMSE status the node answered."""
    reason: str | None
    view: str | None
    laterality: str | None
    view_position: str | None
    not_analysed_reason: str | None
    transfer_syntax_uid: str | None
    bytes: int | None
    sha256: str | None
    calling_ae: str | None
    received_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape; the status as ``0xC000``."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "outcome": self.outcome.value,
            "status": _status(self.status),
            "reason": self.reason,
            "view": self.view,
            "laterality": self.laterality,
            "view_position": self.view_position,
            "not_analysed_reason": self.not_analysed_reason,
            "transfer_syntax_uid": self.transfer_syntax_uid,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "calling_ae": self.calling_ae,
            "received_at": self.received_at.isoformat(),
        }


@dataclass(frozen=True)
class EventRecord:
    """One entry of the event log."""

    at: datetime
    kind: str
    level: str
    detail: str | None
    study_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    calling_ae: str | None = None

    def to_dict(self, *, of_study: bool = False) -> dict[str, Any]:
        """The JSON shape; ``of_study``: within a study's detail, without the UIDs and AE."""
        shape: dict[str, Any] = {"at": self.at.isoformat(), "kind": self.kind, "level": self.level}
        if not of_study:
            shape |= {
                "study_instance_uid": self.study_instance_uid,
                "sop_instance_uid": self.sop_instance_uid,
                "calling_ae": self.calling_ae,
            }
        shape["detail"] = self.detail
        return shape


@dataclass(frozen=True)
class DeliveryRecord:
    """One result object for one destination, and how sending it went."""

    destination: str
    kind: str
    sop_instance_uid: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    """The DIMSE status of the last attempt; None when it got no answer (or none was made)."""
    last_error: str | None
    sent_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape; the status as ``0xA700``."""
        return {
            "destination": self.destination,
            "kind": self.kind,
            "sop_instance_uid": self.sop_instance_uid,
            "state": self.state.value,
            "attempts": self.attempts,
            "last_status": _status(self.last_status),
            "last_error": self.last_error,
            "sent_at": _iso(self.sent_at),
        }


@dataclass(frozen=True)
class JobRecord:
    """One analysis job of a study revision, with its result and deliveries."""

    job_id: int
    revision: int
    state: JobState
    attempts: int
    worker: str | None
    error: str | None
    model_name: str | None
    model_version: str | None
    result: dict[str, Any] | None
    """The analysis as ``cad-node predict --json`` prints one study."""
    report_sop_instance_uid: str | None
    """The job's Mammography CAD SR, once analysed."""
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    requested_by: str | None
    """Who asked for this job by hand (a re-analysis); None for jobs of a completion."""
    deliveries: list[DeliveryRecord]

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (the model as ``{"name", "version"}``)."""
        return {
            "job_id": self.job_id,
            "revision": self.revision,
            "state": self.state.value,
            "attempts": self.attempts,
            "worker": self.worker,
            "error": self.error,
            "model": {"name": self.model_name, "version": self.model_version},
            "result": self.result,
            "report_sop_instance_uid": self.report_sop_instance_uid,
            "created_at": self.created_at.isoformat(),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "requested_by": self.requested_by,
            "deliveries": [d.to_dict() for d in self.deliveries],
        }


@dataclass(frozen=True)
class LatestJob:
    """A study's newest job, as the studies page lists it."""

    state: JobState
    exam_score: float | None


@dataclass(frozen=True)
class StudyListing:
    """A study on the studies page: its summary and its newest job (None before the first)."""

    study: StudySummary
    latest_job: LatestJob | None


@dataclass(frozen=True)
class StudyDetail(StudySummary):
    """A study with every instance, its events, and its jobs with their deliveries.

    While the study is receiving, ``views`` and ``missing_views`` are those so far.
    """

    instances: list[InstanceRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)
    """Oldest first; filled in by ``overview.study_detail``."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``cad-node audit show --json`` and ``/api/v1/studies/{uid}``."""
        return super().to_dict() | {
            "instances": [i.to_dict() for i in self.instances],
            "events": [e.to_dict(of_study=True) for e in self.events],
            "jobs": [j.to_dict() for j in self.jobs],
        }


@dataclass(frozen=True)
class Summary:
    """The node at a glance: counts per state, C-STORE outcomes per window, recent errors."""

    studies: dict[str, int]
    instances: dict[str, dict[str, int]]
    """Outcome counts over ``last_hour`` and ``last_day``."""
    jobs: dict[str, int]
    deliveries: dict[str, int]
    recent_errors: list[EventRecord]

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``cad-node audit summary --json`` and ``/api/v1/summary``."""
        return {
            "studies": self.studies,
            "instances": self.instances,
            "jobs": self.jobs,
            "deliveries": self.deliveries,
            "recent_errors": [e.to_dict() for e in self.recent_errors],
        }
