"""The audit repository: every write and read of the audit database goes through here."""

from __future__ import annotations

import dataclasses
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cad_node import metrics
from cad_node.assembly import (
    InstanceInfo,
    PatientIdentity,
    quiet_cutoff,
    views_present_and_missing,
)
from cad_node.audit.db import lock_rows
from cad_node.audit.models import Event, Instance, Study, new_event, utcnow
from cad_node.audit.views import EventRecord, InstanceRecord, StudyDetail, StudySummary
from cad_node.domain import CompletedStudy, InstanceOutcome, StoredFile, StudyState
from cad_node.errors import DuplicateInstanceError, PatientConflictError


def _patient_conflict(study: Study, patient: PatientIdentity) -> PatientConflictError | None:
    """The error to raise when ``patient`` is not the study's; None when it is (or unknown)."""
    if study.patient_salt is None:
        return None
    id_digest, issuer_digest = patient.digests(bytes.fromhex(study.patient_salt))
    differs = [
        name
        for name, ours, theirs in (
            ("PatientID", id_digest, study.patient_id_digest),
            ("IssuerOfPatientID", issuer_digest, study.patient_issuer_digest),
        )
        if not hmac.compare_digest(ours, theirs or "")
    ]
    if not differs:
        return None
    verb = "differs" if len(differs) == 1 else "differ"
    return PatientConflictError(f"{' and '.join(differs)} {verb} from the study's")


def _remember_patient(study: Study, patient: PatientIdentity) -> None:
    salt = secrets.token_bytes(16)
    study.patient_salt = salt.hex()
    study.patient_id_digest, study.patient_issuer_digest = patient.digests(salt)


class AuditRepository:
    """Reads and writes the audit database; thread-safe (one session per call)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # Writes ----------------------------------------------------------------------------
    def record_event(
        self,
        kind: str,
        *,
        level: str = "info",
        detail: str | None = None,
        study_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        calling_ae: str | None = None,
    ) -> None:
        """Append one event to the log."""
        with self._sessions.begin() as session:
            session.add(
                new_event(
                    kind,
                    level=level,
                    detail=detail,
                    study_instance_uid=study_instance_uid,
                    sop_instance_uid=sop_instance_uid,
                    calling_ae=calling_ae,
                )
            )

    def check_patient(self, study_instance_uid: str, patient: PatientIdentity) -> None:
        """Raise :class:`PatientConflictError` when the study is known for another patient.

        A cheap early check; :meth:`record_stored` checks again in its transaction.
        """
        with self._sessions() as session:
            study = session.scalar(
                select(Study).where(Study.study_instance_uid == study_instance_uid)
            )
            conflict = None if study is None else _patient_conflict(study, patient)
        if conflict is not None:
            raise conflict

    def is_stored(self, sop_instance_uid: str) -> bool:
        """True when this SOP instance is already stored."""
        with self._sessions() as session:
            found = session.scalar(
                select(Instance.id).where(
                    Instance.sop_instance_uid == sop_instance_uid,
                    Instance.outcome == InstanceOutcome.STORED,
                )
            )
            return found is not None

    def record_stored(
        self,
        info: InstanceInfo,
        stored: StoredFile,
        *,
        status: int,
        calling_ae: str,
        peer: str | None,
    ) -> bool:
        """Record a stored instance and open (or re-open) its study, in one transaction.

        Returns True when the study was re-opened by this instance (it had completed).
        Raises :class:`DuplicateInstanceError` when the SOP instance was stored already, and
        :class:`PatientConflictError` (recording nothing) when the study is another patient's.
        """
        for attempt in range(3):
            try:
                return self._record_stored(info, stored, status, calling_ae, peer)
            except IntegrityError as exc:
                # Either the instance raced in from another association, or its study was
                # created concurrently (then a retry finds the study and succeeds).
                if self.is_stored(info.sop_instance_uid):
                    raise DuplicateInstanceError(info.sop_instance_uid) from exc
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _record_stored(
        self,
        info: InstanceInfo,
        stored: StoredFile,
        status: int,
        calling_ae: str,
        peer: str | None,
    ) -> bool:
        now = utcnow()
        with self._sessions.begin() as session:
            study, created, reopened = self._touch_study(session, info, now)
            session.add(
                Instance(
                    received_at=now,
                    outcome=InstanceOutcome.STORED,
                    status=status,
                    calling_ae=calling_ae,
                    peer=peer,
                    sop_instance_uid=info.sop_instance_uid,
                    sop_class_uid=info.sop_class_uid,
                    study_id=study.id,
                    series_instance_uid=info.series_instance_uid,
                    transfer_syntax_uid=stored.transfer_syntax_uid,
                    modality=info.modality,
                    laterality=info.laterality.value if info.laterality else None,
                    view_position=info.view_position,
                    view=info.view,
                    not_analysed_reason=info.not_analysed_reason,
                    bytes=stored.bytes,
                    sha256=stored.sha256,
                    path=stored.path,
                )
            )
            events = [("instance.stored", info.not_analysed_reason)]
            if created:
                events.insert(0, ("study.created", None))
            if reopened:
                events.insert(0, ("study.reopened", "late instance after completion"))
            for kind, detail in events:
                session.add(
                    new_event(
                        kind,
                        detail=detail,
                        study_instance_uid=info.study_instance_uid,
                        sop_instance_uid=info.sop_instance_uid,
                        calling_ae=calling_ae,
                        at=now,
                    )
                )
        metrics.INSTANCES.labels(InstanceOutcome.STORED, metrics.status_label(status)).inc()
        metrics.BYTES_RECEIVED.inc(stored.bytes)
        return reopened

    def _touch_study(
        self, session: Session, info: InstanceInfo, now: datetime
    ) -> tuple[Study, bool, bool]:
        study_uid = info.study_instance_uid
        # A completion committing meanwhile is seen, and re-opened: not overwritten unseen.
        lock_rows(session, Study, Study.study_instance_uid == study_uid)
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            study = Study(
                study_instance_uid=study_uid,
                state=StudyState.RECEIVING,
                revision=0,
                created_at=now,
                last_received_at=now,
                views=[],
                missing_views=[],
            )
            _remember_patient(study, info.patient)
            session.add(study)
            session.flush()
            return study, True, False
        conflict = _patient_conflict(study, info.patient)
        if conflict is not None:
            raise conflict  # rolls the transaction back: nothing of this instance is recorded
        if study.patient_salt is None:  # recorded before the check existed
            _remember_patient(study, info.patient)
        reopened = study.state != StudyState.RECEIVING
        study.state = StudyState.RECEIVING
        study.last_received_at = now
        return study, False, reopened

    def record_unstored(
        self,
        *,
        outcome: InstanceOutcome,
        status: int,
        reason: str,
        calling_ae: str,
        peer: str | None,
        sop_instance_uid: str | None,
        sop_class_uid: str | None,
        study_instance_uid: str | None = None,
        transfer_syntax_uid: str | None = None,
        nbytes: int | None = None,
    ) -> None:
        """Record a C-STORE that stored nothing new (rejected, or a duplicate)."""
        metrics.INSTANCES.labels(outcome, metrics.status_label(status)).inc()  # even if DB is down
        now = utcnow()
        with self._sessions.begin() as session:
            study_id = None
            if study_instance_uid:
                study_id = session.scalar(
                    select(Study.id).where(Study.study_instance_uid == study_instance_uid)
                )
            session.add(
                Instance(
                    received_at=now,
                    outcome=outcome,
                    status=status,
                    reason=reason,
                    calling_ae=calling_ae,
                    peer=peer,
                    sop_instance_uid=sop_instance_uid,
                    sop_class_uid=sop_class_uid,
                    study_id=study_id,
                    transfer_syntax_uid=transfer_syntax_uid,
                    bytes=nbytes,
                )
            )
            session.add(
                new_event(
                    f"instance.{outcome.value}",
                    level="warning" if outcome == InstanceOutcome.REJECTED else "info",
                    detail=reason,
                    study_instance_uid=study_instance_uid,
                    sop_instance_uid=sop_instance_uid,
                    calling_ae=calling_ae,
                    at=now,
                )
            )

    def complete_due_studies(self, now: datetime, quiet_seconds: float) -> list[CompletedStudy]:
        """Complete every receiving study that has been quiet long enough.

        Safe against a racing instance: the state change re-checks the timestamp, so a study
        that just received an instance stays open.
        """
        cutoff = quiet_cutoff(now, quiet_seconds)
        completed: list[CompletedStudy] = []
        with self._sessions() as session:
            due = session.scalars(
                select(Study.id).where(
                    Study.state == StudyState.RECEIVING, Study.last_received_at <= cutoff
                )
            ).all()
        for study_id in due:
            result = self._complete(study_id, cutoff, now)
            if result is not None:
                completed.append(result)
                metrics.STUDIES_COMPLETED.inc()
        return completed

    def _complete(self, study_id: int, cutoff: datetime, now: datetime) -> CompletedStudy | None:
        with self._sessions.begin() as session:
            lock_rows(session, Study, Study.id == study_id)  # no instance lands meanwhile
            views = session.scalars(
                select(Instance.view).where(
                    Instance.study_id == study_id, Instance.outcome == InstanceOutcome.STORED
                )
            ).all()
            present, missing = views_present_and_missing(views)
            changed = session.execute(
                update(Study)
                .where(
                    Study.id == study_id,
                    Study.state == StudyState.RECEIVING,
                    Study.last_received_at <= cutoff,
                )
                .values(
                    state=StudyState.COMPLETE,
                    completed_at=now,
                    revision=Study.revision + 1,
                    views=present,
                    missing_views=missing,
                )
                .returning(Study.study_instance_uid, Study.revision)
            ).first()
            if changed is None:
                return None
            uid, revision = changed
            # The revision's instance set, fixed now: its job analyses exactly these.
            session.execute(
                update(Instance)
                .where(
                    Instance.study_id == study_id,
                    Instance.outcome == InstanceOutcome.STORED,
                    Instance.revision.is_(None),
                )
                .values(revision=revision)
            )
            detail = f"views={','.join(present) or '-'} missing={','.join(missing) or '-'}"
            session.add(
                new_event(
                    "study.completed",
                    detail=f"revision {revision}; {detail}",
                    study_instance_uid=uid,
                    at=now,
                )
            )
            return CompletedStudy(uid, revision, present, missing)

    # Reads -----------------------------------------------------------------------------
    def list_studies(self, limit: int = 100) -> list[StudySummary]:
        """The most recently active studies, newest first."""
        with self._sessions() as session:
            counts = (
                select(Instance.study_id, func.count().label("n"))
                .where(Instance.outcome == InstanceOutcome.STORED)
                .group_by(Instance.study_id)
                .subquery()
            )
            rows = session.execute(
                select(Study, func.coalesce(counts.c.n, 0))
                .outerjoin(counts, counts.c.study_id == Study.id)
                .order_by(Study.last_received_at.desc())
                .limit(limit)
            ).all()
            return [_summary(study, n) for study, n in rows]

    def search_studies(
        self, text: str = "", state: str = "", *, offset: int = 0, limit: int = 50
    ) -> tuple[list[StudySummary], int]:
        """A page of studies, newest first, whose UID or calling AE contains ``text`` (and in
        ``state`` when given), each with its calling AE; and how many match in all."""
        with self._sessions() as session:
            per_study = (
                select(
                    Instance.study_id,
                    func.count().label("n"),
                    func.min(Instance.calling_ae).label("calling_ae"),
                )
                .where(Instance.outcome == InstanceOutcome.STORED)
                .group_by(Instance.study_id)
                .subquery()
            )
            query = select(
                Study, func.coalesce(per_study.c.n, 0), per_study.c.calling_ae
            ).outerjoin(per_study, per_study.c.study_id == Study.id)
            if text:
                pattern = f"%{text}%"
                query = query.where(
                    Study.study_instance_uid.like(pattern) | per_study.c.calling_ae.like(pattern)
                )
            if state:
                query = query.where(Study.state == state)
            total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
            rows = session.execute(
                query.order_by(Study.last_received_at.desc(), Study.id.desc())
                .offset(offset)
                .limit(limit)
            ).all()
            return [_summary(study, n, calling_ae) for study, n, calling_ae in rows], total

    def show_study(self, study_instance_uid: str) -> StudyDetail | None:
        """A study with its instances and events, or None when unknown."""
        with self._sessions() as session:
            study = session.scalar(
                select(Study).where(Study.study_instance_uid == study_instance_uid)
            )
            if study is None:
                return None
            instances = session.scalars(
                select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
            ).all()
            events = session.scalars(
                select(Event)
                .where(Event.study_instance_uid == study_instance_uid)
                .order_by(Event.id)
            ).all()
            stored = [i for i in instances if i.outcome == InstanceOutcome.STORED]
            detail = StudyDetail(
                **vars(_summary(study, len(stored))),
                instances=[_instance(i) for i in instances],
                events=[EventRecord(e.at, e.kind, e.level, e.detail) for e in events],
            )
            if study.state == StudyState.RECEIVING:
                present, missing = views_present_and_missing(i.view for i in stored)
                detail = dataclasses.replace(detail, views=present, missing_views=missing)
            return detail

    def ingest_counts(self, now: datetime) -> dict[str, Any]:
        """Studies per state and C-STORE outcomes over the last hour and day."""
        with self._sessions() as session:
            studies = session.execute(select(Study.state, func.count()).group_by(Study.state)).all()
            windows: dict[str, dict[str, int]] = {}
            for name, hours in (("last_hour", 1), ("last_day", 24)):
                rows = session.execute(
                    select(Instance.outcome, func.count())
                    .where(Instance.received_at >= now - timedelta(hours=hours))
                    .group_by(Instance.outcome)
                ).all()
                windows[name] = {str(outcome): int(n) for outcome, n in rows}
            return {"studies": {str(s): int(n) for s, n in studies}, "instances": windows}

    def recent_events(
        self, limit: int = 50, level: str | None = None, kind: str = "", *, offset: int = 0
    ) -> list[EventRecord]:
        """The newest events, newest first: optionally of one level, and of kinds starting with
        ``kind`` (``association.`` or ``association.rejected``)."""
        with self._sessions() as session:
            query = select(Event).order_by(Event.id.desc()).offset(offset).limit(limit)
            if level:
                query = query.where(Event.level == level)
            if kind:
                query = query.where(Event.kind.startswith(kind, autoescape=True))
            return [
                EventRecord(
                    e.at,
                    e.kind,
                    e.level,
                    e.detail,
                    e.study_instance_uid,
                    e.sop_instance_uid,
                    e.calling_ae,
                )
                for e in session.scalars(query)
            ]

    def event_kinds(self) -> list[str]:
        """Every event kind in the log, sorted (the events page's filter)."""
        with self._sessions() as session:
            return sorted(str(k) for k in session.scalars(select(Event.kind).distinct()))


def _summary(study: Study, n_instances: int, calling_ae: str | None = None) -> StudySummary:
    return StudySummary(
        study_instance_uid=study.study_instance_uid,
        state=StudyState(study.state),
        revision=study.revision,
        views=list(study.views),
        missing_views=list(study.missing_views),
        n_instances=n_instances,
        created_at=study.created_at,
        last_received_at=study.last_received_at,
        completed_at=study.completed_at,
        calling_ae=calling_ae,
    )


def _instance(i: Instance) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=i.sop_instance_uid,
        series_instance_uid=i.series_instance_uid,
        sop_class_uid=i.sop_class_uid,
        outcome=InstanceOutcome(i.outcome),
        status=i.status,
        reason=i.reason,
        view=i.view,
        laterality=i.laterality,
        view_position=i.view_position,
        not_analysed_reason=i.not_analysed_reason,
        transfer_syntax_uid=i.transfer_syntax_uid,
        bytes=i.bytes,
        sha256=i.sha256,
        calling_ae=i.calling_ae,
        received_at=i.received_at,
    )
