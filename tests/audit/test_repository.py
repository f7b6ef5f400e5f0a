from collections.abc import Iterator
from datetime import timedelta

import pytest
from factories import mammogram

from cad_node.assembly import identify
from cad_node.audit.db import make_engine, upgrade
from cad_node.audit.models import utcnow
from cad_node.audit.repository import AuditRepository
from cad_node.domain import StoredFile
from cad_node.errors import DuplicateInstanceError


@pytest.fixture
def repo(database_url: str) -> Iterator[AuditRepository]:
    upgrade(database_url)
    engine = make_engine(database_url)
    yield AuditRepository(engine)
    engine.dispose()


def _store(repo: AuditRepository, **kwargs: object) -> str:
    info = identify(mammogram(**kwargs))  # type: ignore[arg-type]
    stored = StoredFile(path="x.dcm", bytes=10, sha256="0" * 64, transfer_syntax_uid="1.2")
    repo.record_stored(info, stored, status=0, calling_ae="SCU", peer="127.0.0.1:1")
    return info.study_instance_uid


def test_study_completes_only_after_quiet_period(repo: AuditRepository) -> None:
    study = _store(repo, study_uid="1.2.3", laterality="L", view="CC")
    _store(repo, study_uid="1.2.3", laterality="R", view="MLO")
    assert repo.complete_due_studies(utcnow(), quiet_seconds=60) == []
    done = repo.complete_due_studies(utcnow() + timedelta(seconds=61), quiet_seconds=60)
    assert [(d.study_instance_uid, d.revision) for d in done] == [(study, 1)]
    assert done[0].views == ["L-CC", "R-MLO"]
    assert done[0].missing_views == ["L-MLO", "R-CC"]
    shown = repo.show_study(study)
    assert shown is not None
    assert shown.state == "complete"
    assert [e.kind for e in shown.events] == [
        "study.created",
        "instance.stored",
        "instance.stored",
        "study.completed",
    ]


def test_late_instance_reopens_and_bumps_revision(repo: AuditRepository) -> None:
    study = _store(repo, study_uid="1.2.4", laterality="L", view="CC")
    later = utcnow() + timedelta(seconds=10)
    assert len(repo.complete_due_studies(later, quiet_seconds=1)) == 1
    _store(repo, study_uid="1.2.4", laterality="L", view="MLO")
    shown = repo.show_study(study)
    assert shown is not None and shown.state == "receiving"
    again = repo.complete_due_studies(utcnow() + timedelta(seconds=10), quiet_seconds=1)
    assert [(d.revision, d.views) for d in again] == [(2, ["L-CC", "L-MLO"])]


def test_same_instance_cannot_be_stored_twice(repo: AuditRepository) -> None:
    info = identify(mammogram())
    stored = StoredFile(path="x.dcm", bytes=1, sha256="0" * 64, transfer_syntax_uid="1.2")
    repo.record_stored(info, stored, status=0, calling_ae="A", peer=None)
    assert repo.is_stored(info.sop_instance_uid)
    with pytest.raises(DuplicateInstanceError):
        repo.record_stored(info, stored, status=0, calling_ae="A", peer=None)
