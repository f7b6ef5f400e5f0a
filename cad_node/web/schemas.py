"""The API's response shapes: those of ``cad-node audit ... --json``, for the OpenAPI schema.

Unknown keys are refused, so a field added to the audit output without its schema fails the
API's tests instead of vanishing from the documentation.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudyRow(_Shape):
    study_instance_uid: str
    status: str
    revision: int
    views: list[str]
    missing_views: list[str]
    n_instances: int
    created_at: str
    last_received_at: str
    completed_at: str | None


class InstanceRow(_Shape):
    sop_instance_uid: str | None
    series_instance_uid: str | None
    sop_class_uid: str | None
    outcome: str
    status: str
    reason: str | None
    view: str | None
    laterality: str | None
    view_position: str | None
    not_analysed_reason: str | None
    transfer_syntax_uid: str | None
    bytes: int | None
    sha256: str | None
    calling_ae: str | None
    received_at: str


class StudyEvent(_Shape):
    at: str
    kind: str
    level: str
    detail: str | None


class DeliveryRow(_Shape):
    destination: str
    kind: str
    sop_instance_uid: str
    state: str
    attempts: int
    last_status: str | None
    last_error: str | None
    sent_at: str | None


class ModelRef(_Shape):
    name: str | None
    version: str | None


class JobRow(_Shape):
    job_id: int
    revision: int
    state: str
    attempts: int
    worker: str | None
    error: str | None
    model: ModelRef
    result: dict[str, Any] | None
    """The analysis as ``cad-node predict --json`` prints one study."""
    report_sop_instance_uid: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    requested_by: str | None
    """Who asked for this job by hand (a re-analysis); null for jobs of a completion."""
    deliveries: list[DeliveryRow]


class StudyDetail(StudyRow):
    instances: list[InstanceRow]
    events: list[StudyEvent]
    jobs: list[JobRow]


class EventRow(_Shape):
    at: str
    kind: str
    level: str
    study_instance_uid: str | None
    sop_instance_uid: str | None
    calling_ae: str | None
    detail: str | None


class InstanceWindows(_Shape):
    last_hour: dict[str, int]
    last_day: dict[str, int]


class Summary(_Shape):
    studies: dict[str, int]
    instances: InstanceWindows
    jobs: dict[str, int]
    deliveries: dict[str, int]
    recent_errors: list[EventRow]


class ReanalysisRequest(_Shape):
    requested_by: str | None = Field(default=None, max_length=64)
    """Who asks, for the audit log (the token names nobody); recorded as ``NAME (api)``."""


class ReanalysisQueued(_Shape):
    job_id: int
    revision: int
    requested_by: str
