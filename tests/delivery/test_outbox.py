"""Delivery of result objects to real SCPs: retries, outages, refusals, the outbox."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import mammogram, write
from helpers import require_dcmtk, wait_for
from receiver import Receiver, start_receiver
from services import free_port

from cad_node.assembly import identify
from cad_node.audit.db import make_engine, upgrade
from cad_node.audit.deliveries import DeliveryRepository
from cad_node.audit.jobs import JobRepository
from cad_node.audit.repository import AuditRepository
from cad_node.delivery.outbox import Outbox, RetryPolicy
from cad_node.domain import JobState, ResultObject, StoredFile
from cad_node.settings import Destination

FAST_RETRY = RetryPolicy(max_attempts=3, base_seconds=0.01, max_seconds=0.05)


@pytest.fixture
def jobs(database_url: str) -> Iterator[JobRepository]:
    upgrade(database_url)
    engine = make_engine(database_url)
    yield JobRepository(engine)
    engine.dispose()


def make_outbox(
    jobs: JobRepository,
    root: Path,
    destinations: list[Destination],
    policy: RetryPolicy | None = None,
    **extra: Any,
) -> Outbox:
    """The outbox under ``root`` sending to ``destinations``, on the jobs' database."""
    return Outbox(
        DeliveryRepository(jobs.engine),
        root,
        destinations,
        calling_ae="CADNODE",
        policy=policy or FAST_RETRY,
        **extra,
    )


def _job_with_objects(
    jobs: JobRepository, outbox: Path, destinations: list[Destination], n: int = 3
) -> tuple[int, list[str]]:
    """A study, a job analysed into ``n`` result objects waiting in the outbox."""
    source = mammogram()
    AuditRepository(jobs.engine).record_stored(
        identify(source),
        StoredFile("x.dcm", 1, "0" * 64, "1.2.840.10008.1.2.1"),
        status=0,
        calling_ae="MODALITY",
        peer=None,
    )
    job_id, _ = jobs.create_job(source.StudyInstanceUID, 1)
    start = jobs.start_job(job_id, "test")
    assert start is not None
    objects = []
    for i in range(n):
        ds = mammogram(study_uid=source.StudyInstanceUID, seed=i)
        path = write(ds, outbox / f"job-{job_id}")
        objects.append(
            ResultObject(
                "heatmap-sc",
                str(ds.SOPClassUID),
                str(ds.SOPInstanceUID),
                str(path.relative_to(outbox)),
            )
        )
    jobs.finish_analysis(
        job_id,
        attempt=start.attempt,
        result={"exam_score": 0.5},
        model={"name": "m"},
        objects=objects,
        destinations=[str(d) for d in destinations],
    )
    return job_id, [o.sop_instance_uid for o in objects]


def _job_state(jobs: JobRepository, job_id: int) -> str:
    [job] = [j for j in jobs.jobs_of_study(_study_of(jobs, job_id)) if j.job_id == job_id]
    return str(job.state)


def _study_of(jobs: JobRepository, job_id: int) -> str:
    from cad_node.audit.models import Job

    with jobs.engine.connect() as conn:
        return str(
            conn.execute(Job.__table__.select().where(Job.id == job_id)).first().study_instance_uid
        )  # type: ignore[union-attr]


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for r in started:
        r.stop()


def test_delivers_every_object_once_to_every_destination(
    jobs: JobRepository, tmp_path: Path, receivers: list[Receiver]
) -> None:
    a, b = start_receiver("PACS_A"), start_receiver("PACS_B")
    receivers += [a, b]
    dests = [Destination(ae_title=r.ae_title, host="127.0.0.1", port=r.port) for r in (a, b)]
    job_id, uids = _job_with_objects(jobs, tmp_path / "outbox", dests)
    outbox = make_outbox(jobs, tmp_path / "outbox", dests)
    summary = outbox.deliver_due(job_id=job_id)
    assert (summary.sent, summary.retrying, summary.failed) == (6, 0, 0)
    assert sorted(a.received) == sorted(uids) and sorted(b.received) == sorted(uids)
    assert _job_state(jobs, job_id) == JobState.DONE
    assert outbox.deliver_due().sent == 0  # nothing left: no duplicates


def test_an_unreadable_outbox_file_fails_alone(
    jobs: JobRepository, tmp_path: Path, receivers: list[Receiver]
) -> None:
    """A lost or damaged file is that object's failure; the rest of the batch still goes."""
    receiver = start_receiver("PACS")
    receivers.append(receiver)
    dest = Destination(ae_title="PACS", host="127.0.0.1", port=receiver.port)
    job_id, uids = _job_with_objects(jobs, tmp_path / "outbox", [dest])
    [lost] = [p for p in (tmp_path / "outbox").rglob("*.dcm") if uids[1] in p.name]
    lost.unlink()
    outbox = make_outbox(jobs, tmp_path / "outbox", [dest])
    summary = outbox.deliver_due(job_id=job_id)
    assert (summary.sent, summary.retrying) == (2, 1)
    assert sorted(receiver.received) == sorted([uids[0], uids[2]])
    job = jobs.jobs_of_study(_study_of(jobs, job_id))[0]
    [waiting] = [d for d in job.deliveries if d.state != "sent"]
    assert waiting.last_error is not None and "unreadable" in waiting.last_error


def test_destination_down_then_up_gets_everything_once(
    jobs: JobRepository, tmp_path: Path, receivers: list[Receiver]
) -> None:
    port = free_port()
    dest = Destination(ae_title="PACS", host="127.0.0.1", port=port)
    job_id, uids = _job_with_objects(jobs, tmp_path / "outbox", [dest])
    policy = RetryPolicy(max_attempts=10, base_seconds=0.01, max_seconds=0.05)
    outbox = make_outbox(jobs, tmp_path / "outbox", [dest], policy)
    down = outbox.deliver_due()
    assert (down.sent, down.retrying) == (0, 3)
    assert _job_state(jobs, job_id) == JobState.DELIVERING
    receiver = start_receiver("PACS", port=port)
    receivers.append(receiver)
    time.sleep(0.1)
    up = outbox.deliver_due()
    assert up.sent == 3
    assert sorted(receiver.received) == sorted(uids)
    assert _job_state(jobs, job_id) == JobState.DONE
    job = jobs.jobs_of_study(_study_of(jobs, job_id))[0]
    assert all(d.attempts == 2 and d.state == "sent" for d in job.deliveries)


def _events(jobs: JobRepository, kind: str) -> list[dict[str, object]]:
    return [e for e in AuditRepository(jobs.engine).recent_events(500) if e.kind == kind]


def test_past_the_attempt_budget_it_alerts_and_keeps_retrying_until_the_pacs_is_back(
    jobs: JobRepository, tmp_path: Path, receivers: list[Receiver]
) -> None:
    """A refusing (or down) PACS for longer than the budget: pending, not failed."""
    good = start_receiver("PACS")
    picky = start_receiver("PICKY", require_calling_aet=["SOMEONE"])
    receivers += [good, picky]
    dests = [
        Destination(ae_title="PACS", host="127.0.0.1", port=good.port),
        Destination(ae_title="PICKY", host="127.0.0.1", port=picky.port),
    ]
    job_id, uids = _job_with_objects(jobs, tmp_path / "outbox", dests)
    outbox = make_outbox(jobs, tmp_path / "outbox", dests)
    for _ in range(FAST_RETRY.max_attempts + 2):
        outbox.deliver_due()
        time.sleep(0.06)
    assert sorted(good.received) == sorted(uids) and picky.received == []
    job = jobs.jobs_of_study(_study_of(jobs, job_id))[0]
    refused = [d for d in job.deliveries if d.destination.startswith("PICKY")]
    assert {d.state for d in refused} == {"pending"}
    assert all(d.attempts > FAST_RETRY.max_attempts for d in refused)
    assert all("calling AE title (ours) not recognised" in d.last_error for d in refused)
    assert job.state == JobState.DELIVERY_PENDING  # analysed; not "failed"
    overdue = _events(jobs, "delivery.overdue")
    assert len(overdue) == 3 and {e.level for e in overdue} == {"error"}  # one per object
    assert jobs.counts()["jobs"] == {"delivery_pending": 1}
    # Once the PACS admin allows us, the next retry delivers: nobody has to step in.
    picky.stop()
    receivers.remove(picky)
    fixed = start_receiver("PICKY", port=picky.port)
    receivers.append(fixed)
    assert outbox.deliver_due().sent == 3
    assert sorted(fixed.received) == sorted(uids)
    assert _job_state(jobs, job_id) == JobState.DONE


def test_an_object_past_retention_fails_and_an_operator_can_send_it_again(
    jobs: JobRepository, tmp_path: Path, receivers: list[Receiver]
) -> None:
    port = free_port()  # down
    dest = Destination(ae_title="PACS", host="127.0.0.1", port=port)
    job_id, uids = _job_with_objects(jobs, tmp_path / "outbox", [dest])
    policy = RetryPolicy(max_attempts=2, base_seconds=0.01, max_seconds=0.05, retention_seconds=0.5)
    outbox = make_outbox(jobs, tmp_path / "outbox", [dest], policy)
    wait_for(lambda: outbox.deliver_due().failed == 3, timeout=10, interval=0.06)
    assert _job_state(jobs, job_id) == JobState.FAILED
    assert len(_events(jobs, "delivery.failed")) == 3
    receiver = start_receiver("PACS", port=port)
    receivers.append(receiver)
    assert outbox.deliveries.retry_failed() == 3  # with a new retention period
    assert outbox.deliver_due().sent == 3
    assert sorted(receiver.received) == sorted(uids)
    assert _job_state(jobs, job_id) == JobState.DONE


def test_retries_go_on_at_the_capped_interval_until_retention_ends() -> None:
    from datetime import UTC, datetime, timedelta

    policy = RetryPolicy(max_attempts=3, base_seconds=5, max_seconds=600, retention_seconds=86400)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    now = created + timedelta(hours=5)
    assert policy.next_attempt(1, now, created) == now + timedelta(seconds=5)
    assert policy.next_attempt(3, now, created) == now + timedelta(seconds=20)
    assert policy.next_attempt(500, now, created) == now + timedelta(seconds=600)
    assert policy.overdue(3) and not policy.overdue(2) and not policy.overdue(4)
    late = created + timedelta(seconds=86400 - 60)
    assert policy.next_attempt(500, late, created) == created + timedelta(seconds=86400)
    assert policy.next_attempt(500, created + timedelta(days=1), created) is None


def test_dcmtk_storescp_receives_the_objects(jobs: JobRepository, tmp_path: Path) -> None:
    storescp = require_dcmtk("storescp")
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    proc = subprocess.Popen(
        [storescp, "-aet", "DCMTKPACS", "-od", str(received), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        dest = Destination(ae_title="DCMTKPACS", host="127.0.0.1", port=port)
        _, uids = _job_with_objects(jobs, tmp_path / "outbox", [dest])
        outbox = make_outbox(jobs, tmp_path / "outbox", [dest])
        wait_for(lambda: outbox.deliver_due().sent == 3 or None, timeout=10, interval=0.2)
        from pydicom import dcmread

        got = sorted(str(dcmread(f).SOPInstanceUID) for f in received.iterdir())
        assert got == sorted(uids)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_write_puts_each_object_durably_under_its_job_and_says_what_to_record(
    tmp_path: Path,
) -> None:
    from pydicom import dcmread

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    outbox = Outbox(
        DeliveryRepository(make_engine(url)),
        tmp_path / "outbox",
        [],
        calling_ae="CADNODE",
        policy=FAST_RETRY,
    )
    first, second = mammogram(seed=1), mammogram(seed=2)
    written = outbox.write(7, [("mammo-cad-sr", first), ("heatmap-sc", second)])
    assert [(o.kind, o.sop_instance_uid) for o in written] == [
        ("mammo-cad-sr", first.SOPInstanceUID),
        ("heatmap-sc", second.SOPInstanceUID),
    ]
    for obj, ds in zip(written, (first, second), strict=True):
        assert obj.path == f"job-7/{obj.kind}_{ds.SOPInstanceUID}.dcm"
        assert (obj.sop_class_uid, obj.study_instance_uid) == (
            ds.SOPClassUID,
            ds.StudyInstanceUID,
        )
        back = dcmread(tmp_path / "outbox" / obj.path)
        assert back.SOPInstanceUID == ds.SOPInstanceUID and back.file_meta.TransferSyntaxUID
    assert outbox.write(8, []) == []
