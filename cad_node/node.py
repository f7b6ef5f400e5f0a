"""The running node: audit database, spool, storage SCP and the study monitor, wired together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from cad_node import phi, tls
from cad_node.atna import AuditTrail
from cad_node.audit.db import make_engine, upgrade
from cad_node.audit.jobs import JobRepository
from cad_node.audit.models import utcnow
from cad_node.audit.repository import AuditRepository
from cad_node.domain import CompletedStudy
from cad_node.ingest.handlers import IngestContext
from cad_node.ingest.scp import StorageSCP
from cad_node.ingest.spool import Spool
from cad_node.pipeline import tasks
from cad_node.pipeline.context import PipelineContext
from cad_node.pipeline.embedded import EmbeddedQueue
from cad_node.settings import Settings
from cad_node.web.context import WebContext
from cad_node.web.server import WebServer

log = logging.getLogger(__name__)

StudyCompleteCallback = Callable[[CompletedStudy], None]

HANDOFF_GRACE_SECONDS = 60.0
"""A completed study still without a job this long after completion lost its hand-off."""


class StudyMonitor:
    """Completes studies after their quiet period, from database timestamps.

    Downtime is not quiet time: a sender cut off by a crash resends once the node is back, so
    nothing completes before a full quiet period after :meth:`start`. Studies left pending by a
    crash then complete from their stored ``last_received_at``.
    """

    def __init__(
        self,
        repo: AuditRepository,
        quiet_seconds: float,
        on_complete: StudyCompleteCallback,
        interval: float | None = None,
    ) -> None:
        self.repo = repo
        self.quiet_seconds = quiet_seconds
        self.on_complete = on_complete
        self.interval = interval if interval is not None else min(1.0, quiet_seconds / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="study-monitor", daemon=True)
        self._listening_since = utcnow()

    def start(self) -> None:
        """Start checking in a background thread; the quiet period runs from now at least."""
        self._listening_since = utcnow()
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def check_once(self) -> list[CompletedStudy]:
        """Complete every due study now and hand each to the callback."""
        now = utcnow()
        if (now - self._listening_since).total_seconds() < self.quiet_seconds:
            return []  # the quiet period restarts with the node
        completed = self.repo.complete_due_studies(now, self.quiet_seconds)
        for study in completed:
            log.info(
                "study %s complete (revision %d): views %s, missing %s",
                study.study_instance_uid,
                study.revision,
                ",".join(study.views) or "none",
                ",".join(study.missing_views) or "none",
            )
            try:
                self.on_complete(study)
            except Exception as exc:  # the monitor must keep running for other studies
                log.error(
                    "could not hand study %s on (%s)", study.study_instance_uid, type(exc).__name__
                )
        return completed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_once()
            except Exception as exc:
                log.error("study monitor pass failed (%s); retrying", type(exc).__name__)


class JobQueue(Protocol):
    """Where the node puts jobs: the embedded queue or Celery."""

    def enqueue(self, job_id: int) -> None: ...

    def shutdown(self) -> None: ...


class Node:
    """Everything ``cad-node serve`` runs, startable and stoppable in-process (tests use it).

    With ``pipeline=False`` the node only ingests and assembles studies (no jobs are created).
    """

    def __init__(self, settings: Settings, *, pipeline: bool = True) -> None:
        phi.guard_logs()
        self.settings = settings
        url = settings.effective_database_url
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(url)
        self.engine = make_engine(url)
        self.repo = AuditRepository(self.engine)
        self.atna = AuditTrail.from_settings(settings)
        self.spool = Spool(
            settings.spool_dir, settings.incoming_dir, min_free_bytes=settings.min_free_mb * 2**20
        )
        ctx = IngestContext(
            repo=self.repo,
            spool=self.spool,
            ae_title=settings.ae_title,
            allowed_calling_aes=tuple(settings.allowed_calling_aes),
            atna=self.atna,
            slow_store_seconds=settings.slow_store_seconds,
        )
        self.scp = StorageSCP(settings, ctx)  # builds the TLS context: bad files fail here
        self.monitor = StudyMonitor(self.repo, settings.study_quiet_seconds, self._on_complete)
        self.web: WebServer | None = None
        if settings.http_port:  # 0: no web server
            web = WebContext(
                settings,
                self.repo,
                JobRepository(self.engine),
                self.spool,
                lambda: self.scp.listening,
                self._deliver_now if pipeline else None,
                self.atna,
                reanalyse=self.reanalyse if pipeline else None,
            )
            self.web = WebServer(web)
        self.pipeline: PipelineContext | None = None
        self.queue: JobQueue | None = None
        self._sweeper: threading.Thread | None = None
        self._stopping = threading.Event()
        if pipeline:
            tls.check_destinations(settings.destinations)
            self.pipeline = PipelineContext(settings, self.engine, atna=self.atna)
            if settings.broker_url:
                from cad_node.pipeline.celery_app import CeleryQueue

                self.queue = CeleryQueue(settings)
            else:
                self.queue = EmbeddedQueue(self.pipeline)

    def _deliver_now(self) -> None:
        if self.pipeline is not None:
            tasks.deliver(self.pipeline)

    def reanalyse(self, study_instance_uid: str, by: str) -> tuple[int, int]:
        """Queue a re-analysis of a complete study asked for by ``by``: ``(job_id, revision)``.

        Raises what :meth:`JobRepository.request_reanalysis` raises.
        """
        assert self.pipeline is not None and self.queue is not None
        job_id, revision = self.pipeline.jobs.request_reanalysis(study_instance_uid, by)
        log.info(
            "study %s: re-analysis job %d (revision %d) queued",
            study_instance_uid,
            job_id,
            revision,
        )
        self.queue.enqueue(job_id)  # after the commit, as every job
        return job_id, revision

    def _on_complete(self, study: CompletedStudy) -> None:
        self._queue_job(study.study_instance_uid, study.revision)

    def _queue_job(self, study_instance_uid: str, revision: int) -> None:
        if self.pipeline is None or self.queue is None:
            return
        job_id, created = self.pipeline.jobs.create_job(study_instance_uid, revision)
        if created:
            self.queue.enqueue(job_id)

    def _queue_missing_jobs(self, *, grace_seconds: float = 0.0) -> None:
        """Create the jobs of completed studies whose hand-off failed or was cut by a crash.

        ``grace_seconds``: leave alone studies completed more recently, whose hand-off by
        the study monitor may be under way (only a genuine recovery is logged).
        """
        assert self.pipeline is not None
        before = utcnow() - timedelta(seconds=grace_seconds) if grace_seconds else None
        for uid, revision in self.pipeline.jobs.studies_without_job(completed_before=before):
            log.warning("study %s revision %d had no job; queueing it now", uid, revision)
            self._queue_job(uid, revision)

    def _sweep_outbox(self) -> None:
        assert self.pipeline is not None
        while not self._stopping.wait(self.settings.delivery_sweep_seconds):
            try:
                self._queue_missing_jobs(grace_seconds=HANDOFF_GRACE_SECONDS)
                tasks.deliver(self.pipeline)
            except Exception as exc:
                log.error("outbox sweep failed (%s); retrying", type(exc).__name__)

    def start(self) -> None:
        """Recover from any crash, then listen and start the study monitor."""
        removed = self.spool.prepare()
        if removed:
            log.warning("removed %d partial transfer(s) left by an earlier run", removed)
            self.repo.record_event(
                "node.recovered", level="warning", detail=f"removed {removed} partial file(s)"
            )
        self.scp.start()
        self.repo.record_event(
            "node.started", detail=f"{self.settings.ae_title} on {self.scp.describe()}"
        )
        self.atna.application_started()
        if self.pipeline is not None and self.queue is not None:
            orphans = self.pipeline.outbox.remove_orphans()
            if orphans:
                log.warning("removed %d result file(s) no job records from the outbox", orphans)
                self.repo.record_event(
                    "node.recovered",
                    level="warning",
                    detail=f"removed {orphans} orphaned result(s)",
                )
            for job_id in self.pipeline.jobs.unfinished_jobs():  # interrupted by a restart
                self.queue.enqueue(job_id)
            self._queue_missing_jobs()
            self._sweeper = threading.Thread(
                target=self._sweep_outbox, name="outbox-sweeper", daemon=True
            )
            self._sweeper.start()
        self.monitor.start()
        if self.web is not None:
            self.web.start()

    def stop(self) -> None:
        """Stop listening and monitoring; the database stays consistent at any point."""
        if self._stopping.is_set():
            return  # already stopped
        if self.web is not None:
            self.web.stop()
        self.scp.stop()
        self.monitor.stop()
        self._stopping.set()
        if self.queue is not None:
            self.queue.shutdown()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        self.repo.record_event("node.stopped")
        self.atna.application_stopped()
        self.atna.close()
        if self.pipeline is not None:
            self.pipeline.close()
        self.engine.dispose()
