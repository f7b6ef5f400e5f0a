"""Typed reads: the values the CLI, console and demo show, and their JSON shapes."""

from datetime import timedelta
from pathlib import Path

from factories import mammogram

from cad_node.assembly import identify
from cad_node.audit.db import make_engine, upgrade
from cad_node.audit.models import utcnow
from cad_node.audit.repository import AuditRepository
from cad_node.audit.views import StudyDetail
from cad_node.domain import InstanceOutcome, StoredFile, StudyState
from cad_node.web import schemas


def test_a_study_reads_as_a_typed_value_and_prints_the_api_shape(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    repo = AuditRepository(make_engine(url))
    info = identify(mammogram(laterality="L", view="CC"))
    stored = StoredFile(path="x.dcm", bytes=10, sha256="0" * 64, transfer_syntax_uid="1.2")
    repo.record_stored(info, stored, status=0, calling_ae="SCU", peer="127.0.0.1:1")
    repo.complete_due_studies(utcnow() + timedelta(seconds=10), quiet_seconds=1)

    study = repo.show_study(info.study_instance_uid)
    assert isinstance(study, StudyDetail)
    assert (study.state, study.revision, study.views) == (StudyState.COMPLETE, 1, ["L-CC"])
    assert [i.outcome for i in study.instances] == [InstanceOutcome.STORED]
    assert study.instances[0].status == 0 and study.completed_at is not None

    shape = study.to_dict()
    assert shape["status"] == "complete"  # the JSON keeps its key for the state
    assert shape["instances"][0]["status"] == "0x0000"
    assert list(shape)[-3:] == ["instances", "events", "jobs"]
    schemas.StudyDetail.model_validate(shape)  # unknown or missing keys are refused
    [listed] = repo.list_studies()
    schemas.StudyRow.model_validate(listed.to_dict())
    [event] = repo.recent_events(1)
    assert event.kind == "study.completed"
    schemas.EventRow.model_validate(event.to_dict())
    assert set(event.to_dict(of_study=True)) == set(schemas.StudyEvent.model_fields)
