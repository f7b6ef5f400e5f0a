"""`cad-node serve` killed with SIGKILL after acknowledging images loses nothing."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import four_views
from helpers import wait_for
from model_factory import tiny_model_folder
from pydicom import dcmread
from receiver import dataset_bytes, start_receiver
from scu import store
from services import Process, free_port, node_env, serve, wait_listening
from sqlalchemy import select, update

from cad_node import dicom_status
from cad_node.audit.db import make_engine
from cad_node.audit.jobs import JobRepository
from cad_node.audit.models import Delivery, utcnow
from cad_node.audit.repository import AuditRepository
from cad_node.node import Node


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[tuple[Process, int]]:
    port = free_port()
    env = node_env(
        tmp_path / "data",
        port,
        CAD_NODE_STUDY_QUIET_SECONDS="3",
        CAD_NODE_MODEL=str(tmp_path / "no-such-model"),
    )
    process = serve(tmp_path / "data", env)
    yield process, port
    process.stop()


def test_sigkill_after_acknowledgement_loses_nothing(
    node_process: tuple[Process, int], tmp_path: Path
) -> None:
    node, port = node_process
    node.start()
    wait_listening(port)
    views = four_views()
    assert store(port, views) == [dicom_status.SUCCESS] * 4
    node.kill()  # within the quiet period: the study is still "receiving"

    spool = tmp_path / "data" / "spool"
    uid = views[0].StudyInstanceUID
    for ds in views:
        assert (spool / uid / f"{ds.SOPInstanceUID}.dcm").stat().st_size > 0
    # A transfer cut by the crash left a partial file behind.
    (tmp_path / "data" / "incoming" / "tmpcrashed.dcm").write_bytes(b"partial")

    node.start()
    wait_listening(port)
    repo = AuditRepository(make_engine(f"sqlite:///{tmp_path / 'data' / 'cad-node.db'}"))
    study = wait_for(
        lambda: (s := repo.show_study(uid)) and s.state == "complete" and s, timeout=10
    )
    assert study.views == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    assert [i.outcome for i in study.instances] == ["stored"] * 4
    assert not (tmp_path / "data" / "incoming" / "tmpcrashed.dcm").exists()
    kinds = [e.kind for e in repo.recent_events(100)]
    assert "node.recovered" in kinds
    # The configured model folder is missing: the node says so once, at start-up.
    assert "no manifest.json in model folder" in (tmp_path / "serve.log").read_text()


def test_downtime_is_not_quiet_time(node_factory: Any, tmp_path: Path) -> None:
    """A study cut off by a stop completes a full quiet period after the restart, not at once."""
    first = node_factory(study_quiet_seconds=1.0)
    views = four_views()
    uid = views[0].StudyInstanceUID
    assert store(first.scp.port, views[:3]) == [dicom_status.SUCCESS] * 3
    first.stop()
    time.sleep(1.5)  # down for longer than the quiet period

    second = node_factory(study_quiet_seconds=1.0)
    time.sleep(0.5)
    assert second.repo.show_study(uid).state == "receiving"
    assert store(second.scp.port, views[3:]) == [dicom_status.SUCCESS]  # the sender's resend
    study = wait_for(
        lambda: (s := second.repo.show_study(uid)) and s.state == "complete" and s, timeout=10
    )
    assert study.revision == 1 and study.views == ["L-CC", "L-MLO", "R-CC", "R-MLO"]


@pytest.mark.slow
def test_a_kill_while_sending_resends_the_same_bytes_with_the_same_uid(tmp_path: Path) -> None:
    """Sent but not yet recorded when the node died: sent again, byte-identical, same UID."""
    data = tmp_path / "data"
    port = free_port()
    pacs = start_receiver("PACS")
    env = node_env(
        data,
        port,
        CAD_NODE_STUDY_QUIET_SECONDS="1",
        CAD_NODE_MODEL=str(tiny_model_folder(tmp_path / "model")),
        CAD_NODE_DESTINATIONS=json.dumps(
            [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
        ),
        CAD_NODE_DELIVERY_TIMEOUT_SECONDS="5",
    )
    node = serve(data, env)
    pacs.on_store = lambda uid: node.kill()  # dies while the PACS holds the first object
    try:
        node.start()
        wait_listening(port)
        assert store(port, four_views()) == [dicom_status.SUCCESS] * 4
        wait_for(lambda: not node.alive(), timeout=60)
        pacs.on_store = None
        [first] = pacs.received
        engine = make_engine(f"sqlite:///{data / 'cad-node.db'}")
        with engine.begin() as conn:
            rows = conn.execute(select(Delivery.state, Delivery.attempts)).all()
            assert len(rows) == 6 and set(rows) == {("pending", 0)}  # nothing recorded as sent
            # The dead sender's lease (4 x timeout + 60 s) runs out; the test does not wait.
            conn.execute(update(Delivery).values(next_attempt_at=utcnow()))
        engine.dispose()

        node.start()
        wait_listening(port)
        wait_for(lambda: len(pacs.received) == 7, timeout=60)
        assert len(set(pacs.received)) == 6 and pacs.received.count(first) == 2
        copies = [d for uid, d in zip(pacs.received, pacs.digests, strict=True) if uid == first]
        [outbox_file] = (data / "outbox").rglob(f"*_{first}.dcm")
        assert copies == [hashlib.sha256(dataset_bytes(outbox_file)).hexdigest()] * 2
        assert dcmread(outbox_file).SOPInstanceUID == first
    finally:
        node.stop()
        pacs.stop()


@pytest.mark.slow
def test_orphaned_result_files_are_removed_at_start(node_factory: Any, tmp_path: Path) -> None:
    """Result files of an analysis cut short are removed; recorded ones stay."""
    model = str(tiny_model_folder(tmp_path / "model"))
    first = node_factory(pipeline=True, model=model)
    views = four_views()
    uid = views[0].StudyInstanceUID
    assert store(first.scp.port, views) == [dicom_status.SUCCESS] * 4
    [job] = wait_for(
        lambda: [j for j in JobRepository(first.engine).jobs_of_study(uid) if j.state == "done"],
        timeout=60,
    )
    first.stop()
    outbox = tmp_path / "data" / "outbox"
    recorded = sorted(outbox.rglob("*.dcm"))
    assert len(recorded) == 6
    cut = [outbox / f"job-{job.job_id}" / "heatmap-sc_1.2.3.dcm", outbox / "job-99" / "x.dcm"]
    for path in cut:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"written before the crash")

    node_factory(pipeline=True, model=model)
    assert sorted(outbox.rglob("*.dcm")) == recorded
    assert not (outbox / "job-99").exists()


def test_the_sweeper_leaves_a_hand_off_under_way_alone(
    node_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """No "had no job" warning while the study monitor is handing a study on."""
    slow = Node._on_complete

    def slow_hand_off(self: Node, study: Any) -> None:
        time.sleep(0.5)  # a busy database or broker
        slow(self, study)

    monkeypatch.setattr(Node, "_on_complete", slow_hand_off)
    node = node_factory(
        pipeline=True, model=str(tmp_path / "no-model"), delivery_sweep_seconds=0.05
    )
    views = four_views()
    uid = views[0].StudyInstanceUID
    assert store(node.scp.port, views) == [dicom_status.SUCCESS] * 4
    wait_for(lambda: JobRepository(node.engine).jobs_of_study(uid), timeout=10)
    time.sleep(0.3)
    assert "had no job" not in caplog.text
    assert len(JobRepository(node.engine).jobs_of_study(uid)) == 1
