"""IHE ATNA audit messages: DICOM audit XML (PS3.15 A.5) sent over syslog (RFC 5424).

The builders are pure: each returns one ``AuditMessage`` as text. :class:`AuditTrail` is the
thin sender: a bounded queue drained by one background thread that frames each message per
RFC 5424 and sends it over TLS (RFC 5425) or UDP (RFC 5426). Emitting never blocks or fails
the caller (a C-STORE); a message that cannot be sent is retried a bounded number of times,
then dropped, counted and logged in one line.

Patient data (the PatientID, as the profile asks for a Patient participant object) goes into
the audit XML only, never into a log line or an exception message here.

Codes: event IDs from PS3.16 CID 400, event types CID 401, role IDs CID 402, participant object
ID types CID 404; the small integer values (outcome, object type and role, audit source type,
network access point type) from the schema of PS3.15 A.5.1 and its tables A.5.1.2.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit

from pydicom import dcmread

from cad_node.assembly import InstanceInfo, PatientIdentity, patient_identity
from cad_node.errors import ConfigError

if TYPE_CHECKING:
    from cad_node.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Code:
    """A coded value: ``csd-code``, ``codeSystemName``, ``originalText`` (the meaning)."""

    value: str
    scheme: str
    meaning: str


# PS3.16 CID 400 "Audit Event ID"
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
BEGIN_TRANSFERRING = Code("110102", "DCM", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
# PS3.16 CID 401 "Audit Event Type Code"
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
# PS3.16 CID 402 "Audit Active Participant Role ID Code"
APPLICATION = Code("110150", "DCM", "Application")
APPLICATION_LAUNCHER = Code("110151", "DCM", "Application Launcher")
DESTINATION_ROLE = Code("110152", "DCM", "Destination Role ID")
SOURCE_ROLE = Code("110153", "DCM", "Source Role ID")
# PS3.16 CID 404 "Audit Participant Object ID Type Code"
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
NODE_ID = Code("110182", "DCM", "Node ID")
# PS3.15 Table A.5.1.2.4 (the RFC 3881 values)
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    """Action restarted, e.g. an object that will be sent again."""
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


Action = Literal["C", "R", "U", "D", "E"]

_PERSON, _SYSTEM_OBJECT = "1", "2"  # ParticipantObjectTypeCode
_ROLE_PATIENT, _ROLE_REPORT, _ROLE_SECURITY_RESOURCE = "1", "3", "13"  # ...TypeCodeRole
_APPLICATION_SERVER = "4"  # AuditSourceTypeCode, PS3.15 Table A.5.1.2.1


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a process (an AE) or a person."""

    user_id: str
    is_requestor: bool
    role: Code | None = None
    ae_title: str | None = None
    """Written as ``AlternativeUserID="AETITLES=..."`` (PS3.15 A.5.2.2)."""
    user_name: str | None = None
    host: str | None = None
    """NetworkAccessPointID: an IP address or a host name."""

    @classmethod
    def peer(
        cls, ae_title: str, host: str, *, role: Code | None, is_requestor: bool
    ) -> Participant:
        """A remote DICOM application, known by its AE title and address."""
        return cls(ae_title or "?", is_requestor, role, ae_title or None, host=host or None)


def patient_object_id(patient: PatientIdentity) -> str:
    """``ID^^^issuer`` (HL7 CX, as IHE profiles write patient IDs), or the ID alone."""
    return f"{patient.patient_id}^^^{patient.issuer}" if patient.issuer else patient.patient_id


@dataclass(frozen=True)
class Study:
    """A study participant object: its UID, instance counts per SOP class, its patient."""

    study_uid: str
    sop_classes: dict[str, int] = field(default_factory=dict)
    patient: PatientIdentity | None = None


@dataclass(frozen=True)
class Source:
    """AuditSourceIdentification: who detected the event and wrote the message."""

    source_id: str
    site_id: str = ""


def _now() -> datetime:
    return datetime.now(UTC)


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(
        parent,
        tag,
        {"csd-code": code.value, "codeSystemName": code.scheme, "originalText": code.meaning},
    )


def _message(
    event_id: Code,
    action: Action,
    outcome: Outcome,
    participants: Sequence[Participant],
    source: Source,
    *,
    event_type: Code | None = None,
    when: datetime | None = None,
    outcome_description: str | None = None,
) -> ET.Element:
    root = ET.Element("AuditMessage")
    event = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": (when or _now()).isoformat(timespec="milliseconds"),
            "EventOutcomeIndicator": str(int(outcome)),
        },
    )
    _code(event, "EventID", event_id)
    if event_type is not None:
        _code(event, "EventTypeCode", event_type)
    if outcome_description:
        ET.SubElement(event, "EventOutcomeDescription").text = outcome_description
    for p in participants:
        attrs = {"UserID": p.user_id}
        if p.ae_title:
            attrs["AlternativeUserID"] = f"AETITLES={p.ae_title}"
        if p.user_name:
            attrs["UserName"] = p.user_name
        attrs["UserIsRequestor"] = "true" if p.is_requestor else "false"
        if p.host:
            attrs["NetworkAccessPointID"] = p.host
            attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(p.host) else "1"
        active = ET.SubElement(root, "ActiveParticipant", attrs)
        if p.role is not None:
            _code(active, "RoleIDCode", p.role)
    audit_source = {"AuditSourceID": source.source_id}
    if source.site_id:
        audit_source["AuditEnterpriseSiteID"] = source.site_id
    src = ET.SubElement(root, "AuditSourceIdentification", audit_source)
    ET.SubElement(src, "AuditSourceTypeCode", {"csd-code": _APPLICATION_SERVER})
    return root


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


def _add_studies(root: ET.Element, studies: Sequence[Study]) -> None:
    """Studies (role Report, PS3.15 A.5.3.2/A.5.3.4), then their one Patient (role Patient)."""
    for study in studies:
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": study.study_uid,
                "ParticipantObjectTypeCode": _SYSTEM_OBJECT,
                "ParticipantObjectTypeCodeRole": _ROLE_REPORT,
            },
        )
        _code(obj, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID)
        description = ET.SubElement(obj, "ParticipantObjectDescription")
        for uid, count in sorted(study.sop_classes.items()):
            ET.SubElement(description, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})
    patients = {s.patient for s in studies if s.patient is not None and s.patient.patient_id}
    for patient in sorted(patients, key=patient_object_id):
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": patient_object_id(patient),
                "ParticipantObjectTypeCode": _PERSON,
                "ParticipantObjectTypeCodeRole": _ROLE_PATIENT,
            },
        )
        _code(obj, "ParticipantObjectIDTypeCode", PATIENT_NUMBER)


def _text(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode", xml_declaration=False)


def application_activity(
    source: Source, application: Participant, *, started: bool, when: datetime | None = None
) -> str:
    """Application Activity, Start or Stop (PS3.15 A.5.3.1): action E, the application."""
    app = Participant(
        application.user_id,
        False,
        APPLICATION,
        application.ae_title,
        application.user_name,
        application.host,
    )
    root = _message(
        APPLICATION_ACTIVITY,
        "E",
        Outcome.SUCCESS,
        [app],
        source,
        event_type=APPLICATION_START if started else APPLICATION_STOP,
        when=when,
    )
    return _text(root)


def security_alert(
    source: Source,
    reporter: Participant,
    performer: Participant,
    *,
    event_type: Code,
    subject: str,
    description: str,
    outcome: Outcome = Outcome.MINOR_FAILURE,
    when: datetime | None = None,
) -> str:
    """Security Alert (PS3.15 A.5.3.11): action E; the reporting and the performing process.

    Minor failure means the node's mitigation (here: refusing) was effective. ``subject`` is
    the alert subject (a node ID), ``description`` what happened, as a ParticipantObjectDetail.
    """
    root = _message(
        SECURITY_ALERT,
        "E",
        outcome,
        [reporter, performer],
        source,
        event_type=event_type,
        when=when,
        outcome_description=description,
    )
    obj = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": subject,
            "ParticipantObjectTypeCode": _SYSTEM_OBJECT,
            "ParticipantObjectTypeCodeRole": _ROLE_SECURITY_RESOURCE,
        },
    )
    _code(obj, "ParticipantObjectIDTypeCode", NODE_ID)
    return _text(root)


def instances_transferred(
    source: Source,
    sender: Participant,
    receiver: Participant,
    studies: Sequence[Study],
    *,
    action: Action,
    outcome: Outcome = Outcome.SUCCESS,
    when: datetime | None = None,
    outcome_description: str | None = None,
) -> str:
    """DICOM Instances Transferred (PS3.15 A.5.3.4): C at a receiver that created instances,
    R at the sender; the source (110153) and destination (110152) processes, studies, patient.
    """
    root = _message(
        INSTANCES_TRANSFERRED,
        action,
        outcome,
        [_with_role(sender, SOURCE_ROLE), _with_role(receiver, DESTINATION_ROLE)],
        source,
        when=when,
        outcome_description=outcome_description,
    )
    _add_studies(root, studies)
    return _text(root)


def begin_transferring(
    source: Source,
    sender: Participant,
    receiver: Participant,
    studies: Sequence[Study],
    *,
    when: datetime | None = None,
) -> str:
    """Begin Transferring DICOM Instances (PS3.15 A.5.3.2): action E, as the sender starts."""
    root = _message(
        BEGIN_TRANSFERRING,
        "E",
        Outcome.SUCCESS,
        [_with_role(sender, SOURCE_ROLE), _with_role(receiver, DESTINATION_ROLE)],
        source,
        when=when,
    )
    _add_studies(root, studies)
    return _text(root)


def user_authentication(
    source: Source,
    user: Participant,
    node: Participant,
    *,
    login: bool,
    outcome: Outcome = Outcome.SUCCESS,
    when: datetime | None = None,
) -> str:
    """User Authentication, Login or Logout (PS3.15 A.5.3.12): the user (requestor), the node."""
    root = _message(
        USER_AUTHENTICATION,
        "E",
        outcome,
        [user, node],
        source,
        event_type=LOGIN if login else LOGOUT,
        when=when,
    )
    return _text(root)


def _with_role(p: Participant, role: Code) -> Participant:
    return Participant(p.user_id, p.is_requestor, role, p.ae_title, p.user_name, p.host)


# RFC 5424 framing -------------------------------------------------------------------------
AUTHPRIV_NOTICE = 10 * 8 + 5
"""PRI: facility authpriv (10), severity notice (5), as IHE ITI-20 asks."""
APP_NAME = "cad-node"
MSG_ID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"


def syslog_frame(message: str, *, hostname: str, when: datetime | None = None) -> bytes:
    """``<85>1 TIMESTAMP HOSTNAME cad-node PROCID IHE+RFC-3881 - BOM<xml>`` (RFC 5424)."""
    stamp = (when or _now()).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header = f"<{AUTHPRIV_NOTICE}>1 {stamp} {hostname or '-'} {APP_NAME} {os.getpid()} {MSG_ID} -"
    return header.encode("ascii") + b" " + BOM + message.encode("utf-8")


# Transport -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Destination:
    """Where audit messages go: ``syslog+tls://host:6514`` or ``syslog+udp://host:514``."""

    transport: Literal["tls", "udp"]
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Destination:
        parts = urlsplit(url)
        schemes: dict[str, tuple[Literal["tls", "udp"], int]] = {
            "syslog+tls": ("tls", 6514),
            "syslog+udp": ("udp", 514),
        }
        if parts.scheme not in schemes or not parts.hostname:
            raise ConfigError(
                f"invalid ATNA URL {url!r}: use syslog+tls://HOST[:PORT] or syslog+udp://HOST[:PORT]"
            )
        transport, default_port = schemes[parts.scheme]
        try:
            port = parts.port or default_port
        except ValueError as exc:
            raise ConfigError(f"invalid ATNA URL {url!r}: bad port") from exc
        return cls(transport, parts.hostname, port)

    def __str__(self) -> str:
        return f"syslog+{self.transport}://{self.host}:{self.port}"


class _Connection:
    """One syslog connection: a TLS stream with octet counting, or UDP datagrams."""

    def __init__(self, dest: Destination, tls: ssl.SSLContext | None, timeout: float) -> None:
        self.dest = dest
        self.tls = tls
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def send(self, frame: bytes) -> None:
        if self._sock is None:
            self._sock = self._open()
        try:
            if self.dest.transport == "udp":
                self._sock.send(frame)
            else:  # RFC 5425 section 4.3: MSG-LEN SP SYSLOG-MSG
                self._sock.sendall(str(len(frame)).encode("ascii") + b" " + frame)
        except OSError:
            self.close()
            raise

    def _open(self) -> socket.socket:
        if self.dest.transport == "udp":
            info = socket.getaddrinfo(self.dest.host, self.dest.port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(info[0], socket.SOCK_DGRAM)
            sock.connect(info[4])  # an ICMP "unreachable" then shows as an error on send
            return sock
        assert self.tls is not None
        raw = socket.create_connection((self.dest.host, self.dest.port), timeout=self.timeout)
        try:
            return self.tls.wrap_socket(raw, server_hostname=self.dest.host)
        except BaseException:
            raw.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def tls_context(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """A client context that verifies the audit repository (against ``ca_file`` when given)
    and presents our certificate when given (ATNA's mutual node authentication)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


# The trail ------------------------------------------------------------------------------------
@dataclass
class _Pending:
    frame: bytes
    attempts: int = 0


class SentFile(Protocol):
    """What the outbox knows of one sent file (``delivery.scu.SendOutcome``)."""

    @property
    def path(self) -> Path: ...

    @property
    def delivered(self) -> bool: ...


def _host(peer: str) -> str:
    """The address of ``host:port`` (or ``[v6]:port``)."""
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    return host.strip("[]")


class AuditTrail:
    """Emits the node's audit messages; disabled (every call a no-op) without a destination.

    ``emit`` puts a message on a bounded queue and returns at once. A background thread sends;
    a failed send is retried with capped exponential backoff up to ``max_attempts`` times. When
    the queue is full the oldest message is dropped. Every drop is counted (``dropped``) and
    logged as one line.
    """

    def __init__(
        self,
        url: str = "",
        *,
        ae_title: str = "CADNODE",
        site_id: str = "",
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        queue_size: int = 1000,
        max_attempts: int = 5,
        backoff_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        self.destination = Destination.parse(url) if url else None
        self.hostname = socket.gethostname()
        self.ae_title = ae_title
        self.source = Source(f"{ae_title}@{self.hostname}", site_id)
        self.me = Participant(str(os.getpid()), False, None, ae_title, APP_NAME, self.hostname)
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.dropped = 0
        self.sent = 0
        self._queue: deque[_Pending] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._closing = False
        self._stop = threading.Event()
        self._busy = False
        self._received: dict[object, _Received] = {}
        self._received_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._conn: _Connection | None = None
        if self.destination is not None:
            tls = (
                tls_context(ca_file, cert_file, key_file)
                if self.destination.transport == "tls"
                else None
            )
            self._conn = _Connection(self.destination, tls, timeout)
            self._thread = threading.Thread(target=self._run, name="atna-sender", daemon=True)
            self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditTrail:
        """The trail the settings describe (disabled when ``atna_url`` is empty)."""
        return cls(
            settings.atna_url,
            ae_title=settings.ae_title,
            site_id=settings.atna_site_id,
            ca_file=settings.atna_ca,
            cert_file=settings.atna_cert,
            key_file=settings.atna_key,
            max_attempts=settings.atna_max_attempts,
        )

    @property
    def enabled(self) -> bool:
        return self.destination is not None

    # Queue and sender ---------------------------------------------------------------------
    def emit(self, message: str) -> None:
        """Queue one audit message; never blocks, never raises."""
        if not self.enabled:
            return
        try:
            frame = syslog_frame(message, hostname=self.hostname)
        except Exception as exc:  # a bug in a builder must not reach a C-STORE
            self._drop(f"cannot frame ({type(exc).__name__})")
            return
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self._drop("queue full, oldest dropped")
            self._queue.append(_Pending(frame))
            self._cond.notify()

    def _drop(self, why: str) -> None:
        self.dropped += 1
        log.warning(
            "ATNA audit message to %s dropped: %s (%d dropped so far)",
            self.destination,
            why,
            self.dropped,
        )

    def _run(self) -> None:
        assert self._conn is not None
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue[0]
                self._busy = True
            try:
                self._conn.send(item.frame)
            except Exception as exc:
                item.attempts += 1
                with self._cond:
                    self._busy = False
                    if item.attempts >= self.max_attempts:
                        if self._queue and self._queue[0] is item:
                            self._queue.popleft()
                        self._drop(f"{item.attempts} attempts failed ({type(exc).__name__})")
                        continue
                delay = min(
                    self.backoff_max_seconds, self.backoff_seconds * 2 ** (item.attempts - 1)
                )
                self._stop.wait(delay)  # not woken by new messages: no retry storm
                continue
            with self._cond:
                self._busy = False
                self.sent += 1
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is empty (or ``timeout``); True when everything was sent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued within ``timeout``; what is left is dropped and counted."""
        if not self.enabled:
            return
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._stop.set()
            left = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for _ in range(left):
            self._drop("node stopping")
        if self._thread is not None:
            self._thread.join(timeout=max(timeout, 1.0))
        if self._conn is not None:
            self._conn.close()

    # The node's events ----------------------------------------------------------------------
    def application_started(self) -> None:
        if self.enabled:
            self.emit(application_activity(self.source, self.me, started=True))

    def application_stopped(self) -> None:
        if self.enabled:
            self.emit(application_activity(self.source, self.me, started=False))

    def association_rejected(self, calling_ae: str, peer: str, reason: str) -> None:
        """A Security Alert, Node Authentication (110126): a peer (``host:port``) we refused.

        Of the Security Alert types of CID 401, Node Authentication is the failed
        identification of a node; refusing an unknown called or calling AE title is that
        check at the DICOM layer. Minor failure: the refusal was the effective mitigation.
        """
        if not self.enabled:
            return
        peer_host = _host(peer)
        performer = Participant.peer(calling_ae, peer_host, role=None, is_requestor=True)
        message = security_alert(
            self.source,
            self.me,
            performer,
            event_type=NODE_AUTHENTICATION,
            subject=f"{calling_ae or '?'}@{peer_host}",
            description=f"association rejected: {reason}",
        )
        self.emit(message)

    def instance_received(
        self, association: object, calling_ae: str, peer: str, info: InstanceInfo
    ) -> None:
        """Note one stored instance; :meth:`association_ended` reports them per study."""
        if not self.enabled:
            return
        with self._received_lock:
            entry = self._received.setdefault(association, _Received(calling_ae, _host(peer)))
            study = entry.studies.setdefault(info.study_instance_uid, _StudyCount(info.patient))
            sop_class = info.sop_class_uid
            study.sop_classes[sop_class] = study.sop_classes.get(sop_class, 0) + 1

    def association_ended(self, association: object) -> None:
        """One DICOM Instances Transferred (action C) per study the association stored."""
        if not self.enabled:
            return
        with self._received_lock:
            entry = self._received.pop(association, None)
        if entry is None:
            return
        sender = Participant.peer(entry.calling_ae, entry.peer_host, role=None, is_requestor=True)
        for uid, count in entry.studies.items():
            study = Study(uid, dict(count.sop_classes), count.patient)
            self.emit(instances_transferred(self.source, sender, self.me, [study], action="C"))

    def console_login(self, user: str, host: str, *, login: bool, succeeded: bool) -> None:
        """User Authentication (login or logout) of an ops console user from ``host``; a
        refused login is a minor failure (the refusal worked)."""
        if not self.enabled:
            return
        person = Participant(user or "?", True, host=host or None)
        outcome = Outcome.SUCCESS if succeeded else Outcome.MINOR_FAILURE
        self.emit(user_authentication(self.source, person, self.me, login=login, outcome=outcome))

    def transfer_begun(self, ae_title: str, host: str, files: Iterable[Path]) -> None:
        """Begin Transferring DICOM Instances to a destination (one message per study)."""
        if not self.enabled:
            return
        receiver = Participant.peer(ae_title, host, role=None, is_requestor=False)
        me = Participant(self.me.user_id, True, None, self.ae_title, APP_NAME, self.hostname)
        for study in studies_of((p, True) for p in files)[0]:
            self.emit(begin_transferring(self.source, me, receiver, [study]))

    def transferred(self, ae_title: str, host: str, outcomes: Iterable[SentFile]) -> None:
        """DICOM Instances Transferred (action R): one message for what was delivered and one
        for what was not (PS3.15 A.5.2: no message with mixed results), per study."""
        if not self.enabled:
            return
        receiver = Participant.peer(ae_title, host, role=None, is_requestor=False)
        me = Participant(self.me.user_id, True, None, self.ae_title, APP_NAME, self.hostname)
        delivered, failed = studies_of((o.path, o.delivered) for o in outcomes)
        for study in delivered:
            self.emit(instances_transferred(self.source, me, receiver, [study], action="R"))
        for study in failed:
            self.emit(
                instances_transferred(
                    self.source,
                    me,
                    receiver,
                    [study],
                    action="R",
                    outcome=Outcome.MINOR_FAILURE,
                    outcome_description="not delivered; will be retried from the outbox",
                )
            )


@dataclass
class _StudyCount:
    patient: PatientIdentity
    sop_classes: dict[str, int] = field(default_factory=dict)


@dataclass
class _Received:
    calling_ae: str
    peer_host: str
    studies: dict[str, _StudyCount] = field(default_factory=dict)


def studies_of(files: Iterable[tuple[Path, bool]]) -> tuple[list[Study], list[Study]]:
    """Group DICOM files by study (from their headers): (the ``True`` ones, the others).

    Unreadable files are left out: they have no study to name.
    """
    groups: tuple[dict[str, _StudyCount], dict[str, _StudyCount]] = ({}, {})
    for path, ok in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            uid = str(ds.StudyInstanceUID)
            sop_class = str(ds.SOPClassUID)
            patient = patient_identity(ds)
        except Exception:
            continue
        study = groups[0 if ok else 1].setdefault(uid, _StudyCount(patient))
        study.sop_classes[sop_class] = study.sop_classes.get(sop_class, 0) + 1
    return tuple(  # type: ignore[return-value]
        [Study(uid, dict(c.sop_classes), c.patient) for uid, c in g.items()] for g in groups
    )
