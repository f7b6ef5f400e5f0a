"""What ops read: the shapes ``cad-node audit ... --json`` prints and the web API returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cad_node.audit.jobs import JobRepository
from cad_node.audit.repository import AuditRepository


def study_detail(
    repo: AuditRepository, jobs: JobRepository, study_instance_uid: str
) -> dict[str, Any] | None:
    """One study with its instances, events, and jobs with their deliveries; None if unknown."""
    study = repo.show_study(study_instance_uid)
    if study is not None:
        study["jobs"] = jobs.jobs_of_study(study_instance_uid)
    return study


def summary(repo: AuditRepository, jobs: JobRepository, now: datetime) -> dict[str, Any]:
    """Studies by state, images over the last hour and day, jobs, deliveries, recent errors."""
    result = repo.ingest_counts(now)
    result.update(jobs.counts())
    result["recent_errors"] = repo.recent_events(10, "error")
    return result


def studies_page(
    repo: AuditRepository,
    jobs: JobRepository,
    text: str = "",
    state: str = "",
    *,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int]:
    """A page of studies with their calling AE and newest job's state and exam score; and how
    many studies match in all."""
    rows, total = repo.search_studies(text, state, offset=offset, limit=limit)
    latest = jobs.latest_jobs([r["study_instance_uid"] for r in rows])
    for row in rows:
        job = latest.get(row["study_instance_uid"], {})
        row["job_state"], row["exam_score"] = job.get("state"), job.get("exam_score")
    return rows, total
