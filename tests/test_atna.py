"""IHE ATNA audit messages, received by a real rsyslogd and parsed field by field."""

from __future__ import annotations

import logging
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from delivery.test_outbox import _job_with_objects, make_outbox
from factories import four_views
from helpers import wait_for
from receiver import start_receiver
from scu import associate, store
from syslog_receiver import SyslogReceiver, start_rsyslog

from cad_node import atna
from cad_node.audit.db import make_engine, upgrade
from cad_node.audit.jobs import JobRepository
from cad_node.errors import ConfigError
from cad_node.settings import Destination, Settings

_FRAME = re.compile(
    rb"^<(?P<pri>\d+)>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+) - "
    rb"(?P<msg>.*)$",
    re.S,
)


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[SyslogReceiver]:
    receiver = start_rsyslog(tmp_path / "rsyslog")
    yield receiver
    receiver.stop()


def parsed(receiver: SyslogReceiver) -> list[ET.Element]:
    """Every received message: its RFC 5424 header checked, its XML parsed."""
    messages = []
    for line in receiver.lines():
        match = _FRAME.match(line)
        assert match, line[:120]
        assert match["pri"] == b"85"  # authpriv.notice
        assert match["app"] == b"cad-node" and match["msgid"] == b"IHE+RFC-3881"
        msg = match["msg"]
        assert msg.startswith(atna.BOM)
        messages.append(ET.fromstring(msg[len(atna.BOM) :].decode("utf-8")))
    return messages


def of_event(messages: list[ET.Element], event: atna.Code) -> list[ET.Element]:
    return [m for m in messages if _code(m.find("EventIdentification/EventID")) == event]


def _code(element: ET.Element | None) -> atna.Code:
    assert element is not None
    return atna.Code(
        element.attrib["csd-code"], element.attrib["codeSystemName"], element.attrib["originalText"]
    )


def participants(message: ET.Element) -> dict[str, dict[str, str]]:
    """ActiveParticipants by role meaning (or UserID when without a role)."""
    found = {}
    for p in message.findall("ActiveParticipant"):
        role = p.find("RoleIDCode")
        found[_code(role).meaning if role is not None else p.attrib["UserID"]] = p.attrib
    return found


def objects(message: ET.Element) -> list[tuple[str, str, str, atna.Code]]:
    return [
        (
            o.attrib["ParticipantObjectID"],
            o.attrib["ParticipantObjectTypeCode"],
            o.attrib["ParticipantObjectTypeCodeRole"],
            _code(o.find("ParticipantObjectIDTypeCode")),
        )
        for o in message.findall("ParticipantObjectIdentification")
    ]


def test_a_received_study_and_the_node_lifecycle_reach_the_repository_over_udp(
    rsyslog: SyslogReceiver, node_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    node = node_factory(atna_url=f"syslog+udp://127.0.0.1:{rsyslog.udp_port}")
    study = four_views()
    assert store(node.scp.port, study) == [0, 0, 0, 0]
    wait_for(lambda: of_event(parsed(rsyslog), atna.INSTANCES_TRANSFERRED))
    node.stop()
    messages = wait_for(lambda: len(parsed(rsyslog)) >= 3 and parsed(rsyslog))

    start, stop = of_event(messages, atna.APPLICATION_ACTIVITY)
    for message, kind in ((start, atna.APPLICATION_START), (stop, atna.APPLICATION_STOP)):
        event = message.find("EventIdentification")
        assert event is not None and event.attrib["EventActionCode"] == "E"
        assert event.attrib["EventOutcomeIndicator"] == "0"
        assert _code(event.find("EventTypeCode")) == kind
        app = participants(message)["Application"]
        assert app["AlternativeUserID"] == "AETITLES=CADNODE" and app["UserIsRequestor"] == "false"
        source = message.find("AuditSourceIdentification")
        assert source is not None and source.attrib["AuditSourceID"].startswith("CADNODE@")
        assert source.find("AuditSourceTypeCode").attrib["csd-code"] == "4"  # type: ignore[union-attr]

    [received] = of_event(messages, atna.INSTANCES_TRANSFERRED)
    event = received.find("EventIdentification")
    assert event is not None and event.attrib["EventActionCode"] == "C"
    assert event.attrib["EventOutcomeIndicator"] == "0"
    roles = participants(received)
    sender, receiver = roles["Source Role ID"], roles["Destination Role ID"]
    assert sender["AlternativeUserID"] == "AETITLES=TESTSCU" and sender["UserIsRequestor"] == "true"
    assert sender["NetworkAccessPointID"] == "127.0.0.1"
    assert sender["NetworkAccessPointTypeCode"] == "2"
    assert receiver["AlternativeUserID"] == "AETITLES=CADNODE"
    assert receiver["UserIsRequestor"] == "false"
    uid = str(study[0].StudyInstanceUID)
    assert objects(received) == [
        (uid, "2", "3", atna.STUDY_INSTANCE_UID),
        ("SYNTH-001", "1", "1", atna.PATIENT_NUMBER),
    ]
    [sop_class] = received.findall(
        "ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass"
    )
    assert sop_class.attrib == {"UID": str(study[0].SOPClassUID), "NumberOfInstances": "4"}
    # The patient ID is in the audit message the profile asks for, never in the node's logs.
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "SYNTH-001" not in logged and "Synthetic" not in logged
    assert uid in logged  # the logs were captured


def test_a_rejected_association_is_a_security_alert_over_tls(
    rsyslog: SyslogReceiver, node_factory: Callable[..., Any]
) -> None:
    node = node_factory(
        atna_url=f"syslog+tls://127.0.0.1:{rsyslog.tls_port}", atna_ca=rsyslog.ca_file
    )
    assoc = associate(node.scp.port, calling="INTRUDER", called="NOT_US")
    assert assoc.is_rejected
    [alert] = wait_for(lambda: of_event(parsed(rsyslog), atna.SECURITY_ALERT))
    event = alert.find("EventIdentification")
    assert event is not None and event.attrib["EventActionCode"] == "E"
    assert event.attrib["EventOutcomeIndicator"] == "4"  # mitigated: the association was refused
    assert _code(event.find("EventTypeCode")) == atna.NODE_AUTHENTICATION
    assert "called AE title not recognised" in (event.findtext("EventOutcomeDescription") or "")
    performer = participants(alert)["INTRUDER"]
    assert performer["UserIsRequestor"] == "true"
    assert performer["NetworkAccessPointID"] == "127.0.0.1"
    reporter = [
        p for p in alert.findall("ActiveParticipant") if p.attrib["UserIsRequestor"] == "false"
    ]
    assert reporter[0].attrib["AlternativeUserID"] == "AETITLES=CADNODE"
    [(subject, kind, _role, id_type)] = objects(alert)
    assert subject.startswith("INTRUDER@127.0.0.1") and kind == "2" and id_type == atna.NODE_ID


def test_results_sent_are_begun_and_transferred_at_the_sender(
    rsyslog: SyslogReceiver,
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    jobs = JobRepository(make_engine(url))
    pacs = start_receiver("PACS")
    trail = atna.AuditTrail(f"syslog+udp://127.0.0.1:{rsyslog.udp_port}")
    try:
        dest = Destination(ae_title="PACS", host="127.0.0.1", port=pacs.port)
        job_id, _ = _job_with_objects(jobs, tmp_path / "outbox", [dest], n=2)
        outbox = make_outbox(jobs, tmp_path / "outbox", [dest], atna=trail)
        assert outbox.deliver_due(job_id=job_id).sent == 2
        assert trail.flush()
        messages = wait_for(lambda: len(parsed(rsyslog)) >= 2 and parsed(rsyslog))
    finally:
        trail.close()
        pacs.stop()
    [begin] = of_event(messages, atna.BEGIN_TRANSFERRING)
    [sent] = of_event(messages, atna.INSTANCES_TRANSFERRED)
    assert begin.find("EventIdentification").attrib["EventActionCode"] == "E"  # type: ignore[union-attr]
    assert sent.find("EventIdentification").attrib["EventActionCode"] == "R"  # type: ignore[union-attr]
    for message in (begin, sent):
        roles = participants(message)
        assert roles["Source Role ID"]["AlternativeUserID"] == "AETITLES=CADNODE"
        assert roles["Source Role ID"]["UserIsRequestor"] == "true"
        assert roles["Destination Role ID"]["AlternativeUserID"] == "AETITLES=PACS"
        assert [o[3] for o in objects(message)] == [atna.STUDY_INSTANCE_UID, atna.PATIENT_NUMBER]
    [sop_class] = sent.findall(
        "ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass"
    )
    assert sop_class.attrib["NumberOfInstances"] == "2"


def test_an_unreachable_repository_never_slows_a_store_and_drops_are_counted(
    node_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A listener that never completes the TLS handshake: every send hangs until its timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        node = node_factory(
            atna_url=f"syslog+tls://127.0.0.1:{silent.getsockname()[1]}", atna_max_attempts=1
        )
        began = time.monotonic()
        assert store(node.scp.port, four_views()) == [0, 0, 0, 0]
        assert time.monotonic() - began < 3.0
        with caplog.at_level(logging.WARNING, logger="cad_node.atna"):
            node.stop()
        assert node.atna.dropped >= 2  # start and stop at least; the sender was still stuck
        assert node.atna.sent == 0
        assert any("ATNA audit message" in r.getMessage() and "dropped" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
    finally:
        silent.close()


def test_a_closed_port_is_retried_then_dropped_with_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    trail = atna.AuditTrail(f"syslog+tls://127.0.0.1:{port}", max_attempts=3, backoff_seconds=0.01)
    with caplog.at_level(logging.WARNING, logger="cad_node.atna"):
        began = time.monotonic()
        trail.application_started()
        assert time.monotonic() - began < 0.1
        wait_for(lambda: trail.dropped == 1)
        trail.close()
    # this trail's records only: senders of earlier tests may still be logging
    [line] = [
        message
        for r in caplog.records
        if r.name == "cad_node.atna" and str(port) in (message := r.getMessage())
    ]
    assert "3 attempts failed" in line and "1 dropped so far" in line


def test_a_full_queue_drops_the_oldest() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    trail = atna.AuditTrail(
        f"syslog+tls://127.0.0.1:{port}", queue_size=2, max_attempts=100, backoff_seconds=5
    )
    for _ in range(5):
        trail.application_started()
    assert trail.dropped >= 3
    trail.close(timeout=0.1)


def test_user_authentication_for_the_dashboard() -> None:
    source = atna.Source("CADNODE@host")
    user = atna.Participant("alice", True, host="10.0.0.5")
    node = atna.Participant("1234", False, ae_title="CADNODE")
    message = ET.fromstring(atna.user_authentication(source, user, node, login=True))
    event = message.find("EventIdentification")
    assert _code(event.find("EventID") if event is not None else None) == atna.USER_AUTHENTICATION
    assert _code(message.find("EventIdentification/EventTypeCode")) == atna.LOGIN
    assert participants(message)["alice"]["UserIsRequestor"] == "true"


def test_atna_urls_are_checked() -> None:
    assert str(atna.Destination.parse("syslog+tls://audit.example")) == (
        "syslog+tls://audit.example:6514"
    )
    assert atna.Destination.parse("syslog+udp://10.0.0.1").port == 514
    with pytest.raises(ConfigError):
        atna.Destination.parse("https://audit.example")
    with pytest.raises(ValueError, match="invalid ATNA URL"):
        Settings(atna_url="syslog://audit.example")
    assert not atna.AuditTrail("").enabled


def test_console_logins_and_logouts_reach_the_repository(
    rsyslog: SyslogReceiver, node_factory: Callable[..., Any]
) -> None:
    from services import free_port
    from web.test_pages import TOKEN, Client

    node = node_factory(
        atna_url=f"syslog+udp://127.0.0.1:{rsyslog.udp_port}",
        http_port=free_port(),
        http_token=TOKEN,
    )
    client = Client(node.web.port)
    assert client.login(password="wrong") == 401
    assert client.login() == 303
    assert client.request("/logout", {"csrf": client.csrf()})[0] == 303
    messages = wait_for(lambda: len(of_event(parsed(rsyslog), atna.USER_AUTHENTICATION)) == 3)
    found = [
        (
            _code(m.find("EventIdentification/EventTypeCode")),
            m.find("EventIdentification").attrib["EventOutcomeIndicator"],  # type: ignore[union-attr]
            participants(m)["ops"]["NetworkAccessPointID"],
        )
        for m in of_event(parsed(rsyslog), atna.USER_AUTHENTICATION)
    ]
    assert messages and found == [
        (atna.LOGIN, "4", "127.0.0.1"),  # refused: a minor failure
        (atna.LOGIN, "0", "127.0.0.1"),
        (atna.LOGOUT, "0", "127.0.0.1"),
    ]
