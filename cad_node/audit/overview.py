"""What ops read, as typed values (``cad_node.audit.views``): one study, a page of studies, the
summary. ``to_dict`` gives the shapes ``cad-node audit ... --json`` prints and the API returns."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from cad_node.audit.jobs import JobRepository
from cad_node.audit.repository import AuditRepository
from cad_node.audit.views import StudyDetail, StudyListing, Summary


def study_detail(
    repo: AuditRepository, jobs: JobRepository, study_instance_uid: str
) -> StudyDetail | None:
    """One study with its instances, events, and jobs with their deliveries; None if unknown."""
    study = repo.show_study(study_instance_uid)
    if study is None:
        return None
    return dataclasses.replace(study, jobs=jobs.jobs_of_study(study_instance_uid))


def summary(repo: AuditRepository, jobs: JobRepository, now: datetime) -> Summary:
    """Studies by state, images over the last hour and day, jobs, deliveries, recent errors."""
    ingest, work = repo.ingest_counts(now), jobs.counts()
    return Summary(
        studies=ingest["studies"],
        instances=ingest["instances"],
        jobs=work["jobs"],
        deliveries=work["deliveries"],
        recent_errors=repo.recent_events(10, "error"),
    )


def studies_page(
    repo: AuditRepository,
    jobs: JobRepository,
    text: str = "",
    state: str = "",
    *,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[StudyListing], int]:
    """A page of studies with their calling AE and newest job's state and exam score; and how
    many studies match in all."""
    rows, total = repo.search_studies(text, state, offset=offset, limit=limit)
    latest = jobs.latest_jobs([r.study_instance_uid for r in rows])
    return [StudyListing(row, latest.get(row.study_instance_uid)) for row in rows], total
