"""The fault and fuzz campaign against a real `cad-node serve`: shared by bench/ and tests/.

:func:`run_fuzz` starts a node (tiny model, a real storage SCP as the PACS), sends malformed
C-STOREs built from valid mammograms (byte flips, truncations, wrong VRs, absurd lengths, UID
and VR tricks, another patient in a known study) and raw PDU-level attacks, interleaved with
valid studies, and reports the status histogram, whether the node still answers, its resident
memory before and after, tracebacks and patient strings in its log, and whether each valid
study was analysed and delivered exactly once. Every dataset carries the distinctive patient
strings of :data:`PHI_STRINGS`, so that any of them in the node's log or audit database is a
leak.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factories import four_views, mammogram
from model_factory import tiny_model_folder
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom import _config
from receiver import Receiver, start_receiver
from scu import associate
from services import Process, free_port, node_env, serve, wait_listening, wait_until
from sqlalchemy import select

from cad_node import dicom_status
from cad_node.audit.db import make_engine
from cad_node.audit.models import Delivery, Instance, Job, Study

PATIENT_NAME = "Qzxcampaign^Vorlina"
PATIENT_ID = "PHI-QZX-90417"
OTHER_PATIENT_ID = "PHI-QZX-55321"
PHI_STRINGS = ("Qzxcampaign", "Vorlina", PATIENT_ID, OTHER_PATIENT_ID)
"""Put in every dataset; none may appear in the node's log or audit database."""
NO_RESPONSE = -1
"""The status counted when a C-STORE got no answer (association aborted or refused)."""
RESULTS_PER_STUDY = 6
"""A four-view study's results: the CAD SR, the TID 1500 SR and four heatmaps."""
A_ABORT = 0x07
ACSE_TIMEOUT = 5.0
"""The node's ACSE timeout in the campaign: a connection that says nothing valid is closed
within it, so a PDU attack left open for longer than twice that is a finding."""
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_LONG_VRS |= {b"UV"}
_PIXEL_TAG = struct.pack("<HH", 0x7FE0, 0x0010)
_SEQ_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def patient(ds: Dataset, patient_id: str = PATIENT_ID) -> Dataset:
    """``ds`` with the campaign's distinctive patient strings."""
    ds.PatientName = PATIENT_NAME
    ds.PatientID = patient_id
    return ds


def valid_study() -> list[Dataset]:
    return [patient(ds) for ds in four_views()]


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """No warnings while invalid values are made on purpose."""
    saved = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved


# --- malformed C-STOREs ------------------------------------------------------------------


@dataclass
class Mutant:
    """One malformed C-STORE: the file sent byte-for-byte (file meta + dataset bytes)."""

    kind: str
    data: bytes


def file_bytes(ds: Dataset) -> bytes:
    """Preamble, file meta as it is (not made to agree with the dataset), dataset bytes."""
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    return b"\0" * 128 + b"DICM" + meta.getvalue() + body.getvalue()


def split(data: bytes) -> tuple[bytes, bytes]:
    """A DICOM file's preamble + file meta, and its dataset bytes."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    (group_length,) = struct.unpack_from("<L", data, 140)  # (0002,0000) UL, always explicit
    offset = 128 + 4 + 12 + group_length
    return data[:offset], data[offset:]


def elements(body: bytes) -> list[tuple[int, bytes, int]]:
    """Top-level elements of explicit VR little endian bytes: (offset, VR, header size)."""
    found = []
    pos = 0
    while pos + 8 <= len(body):
        vr = body[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            header = 12
            (length,) = struct.unpack_from("<L", body, pos + 8)
        else:
            header = 8
            (length,) = struct.unpack_from("<H", body, pos + 6)
        found.append((pos, vr, header))
        if length == 0xFFFFFFFF:  # a sequence of undefined length
            end = body.find(_SEQ_DELIMITER, pos)
            if end < 0:
                break
            pos = end + len(_SEQ_DELIMITER)
        else:
            pos += header + length
    return found


class Mutator:
    """Malformed variants of small valid mammograms, reproducible from a seed."""

    def __init__(self, rng: random.Random, known_study: str) -> None:
        self.rng = rng
        self.known_study = known_study
        self.study = generate_uid()
        self.kinds: dict[str, Callable[[], Mutant]] = {
            "byte-flip-header": self.flip_header,
            "byte-flip-anywhere": self.flip_anywhere,
            "truncated": self.truncated,
            "wrong-vr": self.wrong_vr,
            "absurd-length": self.absurd_length,
            "undefined-length": self.undefined_length,
            "bad-uid": self.bad_uid,
            "uid-mismatch": self.uid_mismatch,
            "uid-vr-trick": self.uid_vr_trick,
            "sop-class-mismatch": self.sop_class_mismatch,
            "pixel-mismatch": self.pixel_mismatch,
            "no-pixel-data": self.no_pixel_data,
            "value-vr-trick": self.value_vr_trick,
            "deep-sequence": self.deep_sequence,
            "patient-conflict": self.patient_conflict,
            "garbage-dataset": self.garbage,
        }

    def new_study(self) -> None:
        """Later mutants go into another study (accepted ones make studies of their own)."""
        self.study = generate_uid()

    def base(self, study: str | None = None) -> Dataset:
        view = self.rng.choice(["CC", "MLO"])
        lat = self.rng.choice(["L", "R"])
        ds = mammogram(study_uid=study or self.study, rows=32, cols=32, view=view, laterality=lat)
        return patient(ds)

    def make(self) -> Mutant:
        kind = self.rng.choice(sorted(self.kinds))
        with quiet_pydicom():
            return self.kinds[kind]()

    def _body(self, kind: str, change: Callable[[bytearray], None]) -> Mutant:
        head, body = split(file_bytes(self.base()))
        mutable = bytearray(body)
        change(mutable)
        return Mutant(kind, head + bytes(mutable))

    def _elements(self, body: bytes) -> list[tuple[int, bytes, int]]:
        return [e for e in elements(body) if body[e[0] : e[0] + 4] != _PIXEL_TAG]

    def flip_header(self) -> Mutant:
        def change(body: bytearray) -> None:
            end = body.find(_PIXEL_TAG)
            for _ in range(self.rng.randint(1, 8)):
                body[self.rng.randrange(end)] ^= 1 << self.rng.randrange(8)

        return self._body("byte-flip-header", change)

    def flip_anywhere(self) -> Mutant:
        def change(body: bytearray) -> None:
            for _ in range(self.rng.randint(1, 32)):
                body[self.rng.randrange(len(body))] = self.rng.randrange(256)

        return self._body("byte-flip-anywhere", change)

    def truncated(self) -> Mutant:
        def change(body: bytearray) -> None:
            del body[self.rng.randrange(len(body)) :]

        return self._body("truncated", change)

    def wrong_vr(self) -> Mutant:
        def change(body: bytearray) -> None:
            pos, _, _ = self.rng.choice(self._elements(bytes(body)))
            vr = self.rng.choice([b"ZZ", b"\x00\x00", b"SQ", b"OB", b"UL", b"DA", b"US", b"FD"])
            body[pos + 4 : pos + 6] = vr

        return self._body("wrong-vr", change)

    def absurd_length(self) -> Mutant:
        def change(body: bytearray) -> None:
            pos, _, header = self.rng.choice(elements(bytes(body)))
            if header == 12:
                value = self.rng.choice([0xFFFFFFFE, 0x7FFFFFFF, 0x10000000, len(body) + 1])
                struct.pack_into("<L", body, pos + 8, value)
            else:
                struct.pack_into("<H", body, pos + 6, self.rng.choice([0xFFFF, 0xFFFE, 0x8001]))

        return self._body("absurd-length", change)

    def undefined_length(self) -> Mutant:
        """Pixel data (native) or another long-VR element of undefined length."""

        def change(body: bytearray) -> None:
            longs = [e for e in elements(bytes(body)) if e[2] == 12 and e[1] != b"SQ"]
            pos, _, _ = self.rng.choice(longs)
            struct.pack_into("<L", body, pos + 8, 0xFFFFFFFF)

        return self._body("undefined-length", change)

    def bad_uid(self) -> Mutant:
        ds = self.base()
        keyword = self.rng.choice(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        bad = self.rng.choice(
            ["1.2.abc", "1." * 40 + "1", "../../../etc/passwd", "1.2.3\x00", "0.1.02", " ", "1..2"]
        )
        setattr(ds, keyword, bad)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # pynetdicom checks its own
        return Mutant("bad-uid", file_bytes(ds))

    def uid_mismatch(self) -> Mutant:
        ds = self.base()
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the C-STORE request's UID
        return Mutant("uid-mismatch", file_bytes(ds))

    def uid_vr_trick(self) -> Mutant:
        ds = self.base()
        keyword = self.rng.choice(["StudyInstanceUID", "SeriesInstanceUID"])
        tag = ds.data_element(keyword).tag  # type: ignore[union-attr]
        del ds[tag]
        vr, value = self.rng.choice([("US", 1), ("LO", "1.2.3"), ("UN", b"1.2.3\x00"), ("SQ", [])])
        ds.add_new(tag, vr, value)
        return Mutant("uid-vr-trick", file_bytes(ds))

    def sop_class_mismatch(self) -> Mutant:
        ds = self.base()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage; the request says MG
        return Mutant("sop-class-mismatch", file_bytes(ds))

    def pixel_mismatch(self) -> Mutant:
        ds = self.base()
        change = self.rng.choice(["rows", "bits", "frames", "samples"])
        if change == "rows":
            ds.Rows = self.rng.choice([0, 1, 33, 65535])
        elif change == "bits":
            ds.BitsAllocated = self.rng.choice([0, 1, 8, 32, 64])
        elif change == "frames":
            ds.NumberOfFrames = self.rng.choice([0, 2, 10**9])
        else:
            ds.SamplesPerPixel = self.rng.choice([0, 3, 65535])
        return Mutant("pixel-mismatch", file_bytes(ds))

    def no_pixel_data(self) -> Mutant:
        ds = self.base()
        del ds.PixelData
        return Mutant("no-pixel-data", file_bytes(ds))

    def value_vr_trick(self) -> Mutant:
        """A known attribute written with raw bytes its VR cannot hold."""

        def change(body: bytearray) -> None:
            chosen = [e for e in self._elements(bytes(body)) if e[2] == 8]
            pos, _, _ = self.rng.choice(chosen)
            (length,) = struct.unpack_from("<H", body, pos + 6)
            junk = bytes(self.rng.randrange(256) for _ in range(length))
            body[pos + 8 : pos + 8 + length] = junk

        return self._body("value-vr-trick", change)

    def deep_sequence(self) -> Mutant:
        ds = self.base()
        depth = self.rng.choice([50, 200, 1000])
        inner = Dataset()
        inner.CodeValue = "1"
        for _ in range(depth):
            outer = Dataset()
            outer.ContentSequence = [inner]
            inner = outer
        ds.ContentSequence = [inner]
        try:
            return Mutant("deep-sequence", file_bytes(ds))
        except RecursionError:
            return self.garbage()

    def patient_conflict(self) -> Mutant:
        """Another patient's image in a known study (a valid study already stored)."""
        ds = patient(self.base(self.known_study), OTHER_PATIENT_ID)
        return Mutant("patient-conflict", file_bytes(ds))

    def garbage(self) -> Mutant:
        head, _ = split(file_bytes(self.base()))
        size = self.rng.choice([1, 7, 100, 4096])
        return Mutant("garbage-dataset", head + bytes(self.rng.randrange(256) for _ in range(size)))


# --- PDU-level attacks ------------------------------------------------------------------


def _assoc_rq(body_len: int) -> bytes:
    return struct.pack(">BBL", 0x01, 0, body_len)


PDU_ATTACKS: dict[str, bytes] = {
    "a-associate-rq-4gib": bytes.fromhex("0100FFFFFFFF"),
    "a-associate-ac-unasked": bytes.fromhex("0200FFFFFFF0"),
    "unknown-pdu-type": bytes.fromhex("090000000004") + bytes(4),
    "p-data-before-association": bytes.fromhex("0400000000100000000c01") + bytes(11),
    "release-before-association": bytes.fromhex("05000000000400000000"),
    "a-associate-rq-garbage-body": _assoc_rq(68) + bytes(range(68)),
    "a-associate-rq-short-then-close": _assoc_rq(200) + bytes(50),
    "random-bytes": random.Random(7).randbytes(64),
}


def pdu_attack(port: int, kind: str, timeout: float = 2 * ACSE_TIMEOUT) -> str:
    """Send one attack on a fresh connection; how the node ended it."""
    payload = PDU_ATTACKS[kind]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        if kind.endswith("then-close"):
            return "closed by us"
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                break
            received += chunk
        else:
            return "left open"
        if time.monotonic() >= deadline:
            return "left open"
    if received[:1] == bytes([A_ABORT]):
        return "A-ABORT"
    if received[:1] == b"\x03":
        return "A-ASSOCIATE-RJ"
    return "closed" if not received else f"closed after PDU 0x{received[0]:02X}"


def p_data_garbage(port: int, rng: random.Random) -> str:
    """A P-DATA-TF of random PDVs inside an established association."""
    assoc = associate(port, calling="FUZZ")
    if not assoc.is_established:
        return "not associated"
    body = bytes(rng.randrange(256) for _ in range(64))
    assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, len(body)) + body)
    with suppress(AssertionError):
        wait_until(lambda: assoc.is_aborted or not assoc.is_established, 10, "abort")
    state = "aborted" if assoc.is_aborted else "open" if assoc.is_established else "closed"
    with suppress(Exception):
        assoc.abort()
    return state


# --- the node and what it says ----------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def echo_ok(port: int) -> bool:
    assoc = associate(port)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().get("Status") == dicom_status.SUCCESS
    assoc.release()
    return bool(ok)


def send_files(port: int, paths: list[Path], calling: str = "FUZZ") -> list[int]:
    """Send each file as it is, re-associating after an abort; a status per file."""
    statuses: list[int] = []
    assoc = None
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for path in paths:
            if assoc is None or not assoc.is_established:
                assoc = associate(port, calling=calling)
            if not assoc.is_established:
                statuses.append(NO_RESPONSE)
                continue
            try:
                status = assoc.send_c_store(path)
            except (RuntimeError, ValueError, AttributeError):
                statuses.append(NO_RESPONSE)
                continue
            statuses.append(int(status.Status) if "Status" in status else NO_RESPONSE)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc is not None and assoc.is_established:
            assoc.release()
    return statuses


def send_datasets(port: int, datasets: list[Dataset]) -> list[int]:
    assoc = associate(port, calling="MODALITY")
    if not assoc.is_established:
        return [NO_RESPONSE] * len(datasets)
    statuses = []
    for ds in datasets:
        status = assoc.send_c_store(ds)
        statuses.append(int(status.Status) if "Status" in status else NO_RESPONSE)
    assoc.release()
    return statuses


@dataclass
class Node:
    """A `cad-node serve` subprocess with a tiny model and one destination."""

    folder: Path
    pacs: Receiver
    port: int
    process: Process
    data: Path

    @classmethod
    def start(cls, folder: Path, pacs: Receiver, **extra: str) -> Node:
        data = folder / "data"
        port = free_port()
        env = node_env(
            data,
            port,
            CAD_NODE_STUDY_QUIET_SECONDS="1",
            CAD_NODE_MODEL=str(tiny_model_folder(folder / "model")),
            CAD_NODE_DESTINATIONS=json.dumps(
                [{"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}]
            ),
            CAD_NODE_TORCH_THREADS="1",
            **extra,
        )
        node = cls(folder, pacs, port, serve(data, env), data)
        node.process.start()
        wait_listening(port, timeout=60)
        return node

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def engine(self) -> Any:
        return make_engine(f"sqlite:///{self.data / 'cad-node.db'}")

    def deliveries(self, study_uid: str) -> dict[int, tuple[str, list[tuple[str, str]]]]:
        """Per revision: the job's state and its (SOP Instance UID, delivery state) pairs."""
        engine = self.engine()
        try:
            with engine.connect() as conn:
                jobs = conn.execute(
                    select(Job.id, Job.revision, Job.state).where(
                        Job.study_instance_uid == study_uid
                    )
                ).all()
                out: dict[int, tuple[str, list[tuple[str, str]]]] = {}
                for job_id, revision, state in jobs:
                    rows = conn.execute(
                        select(Delivery.sop_instance_uid, Delivery.state).where(
                            Delivery.job_id == job_id
                        )
                    ).all()
                    out[int(revision)] = (str(state), [(str(u), str(s)) for u, s in rows])
                return out
        finally:
            engine.dispose()

    def study_count(self) -> int:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return len(conn.execute(select(Study.id)).all())
        finally:
            engine.dispose()

    def delivered(self, study_uid: str) -> bool:
        """Revision 1's job is done and all its results were sent."""
        first = self.deliveries(study_uid).get(1)
        return bool(
            first
            and first[0] == "done"
            and len(first[1]) == RESULTS_PER_STUDY
            and all(s == "sent" for _, s in first[1])
        )

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> None:
        self.process.stop()


def phi_hits(texts: dict[str, str]) -> list[str]:
    """Which patient strings appear where."""
    return [f"{s} in {where}" for where, text in texts.items() for s in PHI_STRINGS if s in text]


def database_text(data: Path) -> str:
    """The audit database's bytes (with its WAL), as text: patient strings must not be there."""
    parts = [p.read_bytes() for p in sorted(data.glob("cad-node.db*"))]
    return b"".join(parts).decode("latin-1")


# --- the fuzz campaign ------------------------------------------------------------------


@dataclass
class ValidStudy:
    uid: str
    statuses: list[int]
    analysed: bool = False
    copies: Counter[str] = field(default_factory=Counter)
    """How many times each of its result objects reached the PACS."""

    @property
    def delivered_once(self) -> bool:
        return len(self.copies) == RESULTS_PER_STUDY and set(self.copies.values()) == {1}


@dataclass
class FuzzReport:
    seed: int
    malformed: int
    statuses: Counter[int] = field(default_factory=Counter)
    by_kind: dict[str, Counter[int]] = field(default_factory=dict)
    pdu: Counter[str] = field(default_factory=Counter)
    valid: list[ValidStudy] = field(default_factory=list)
    alive: bool = False
    echo: bool = False
    rss_before: int = 0
    rss_after: int = 0
    tracebacks: int = 0
    phi: list[str] = field(default_factory=list)
    slow_stores: list[str] = field(default_factory=list)
    """The node's "slow C-STORE" warnings: where a slow store's time went."""
    seconds: float = 0.0

    @property
    def rss_growth(self) -> int:
        return self.rss_after - self.rss_before

    def format(self) -> str:
        def status(code: int) -> str:
            return "no response" if code == NO_RESPONSE else dicom_status.describe(code)

        lines = [
            f"fuzz: {self.malformed} malformed C-STOREs, seed {self.seed}, {self.seconds:.0f} s"
        ]
        lines.append("status histogram:")
        lines += [f"  {n:6d}  {status(c)}" for c, n in sorted(self.statuses.items())]
        lines.append("per mutation:")
        for kind, counts in sorted(self.by_kind.items()):
            spread = ", ".join(f"{status(c).split(' ')[0]} x{n}" for c, n in sorted(counts.items()))
            lines.append(f"  {kind:22s} {spread}")
        lines.append("PDU attacks: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.pdu.items())))
        ok = sum(v.analysed for v in self.valid)
        once = sum(v.delivered_once for v in self.valid)
        lines.append(
            f"valid studies: {len(self.valid)}, analysed {ok}, delivered exactly once {once}"
        )
        lines.append(f"node alive: {self.alive}, C-ECHO: {self.echo}")
        lines.append(
            f"RSS: {self.rss_before / 2**20:.0f} MiB before, {self.rss_after / 2**20:.0f} MiB "
            f"after ({self.rss_growth / 2**20:+.0f} MiB)"
        )
        lines.append(f"tracebacks logged: {self.tracebacks}")
        lines.append("patient data in logs/audit DB: " + (", ".join(self.phi) or "none"))
        lines.append(f"slow C-STOREs: {len(self.slow_stores)}")
        lines += [f"  {line}" for line in self.slow_stores]
        return "\n".join(lines)


def _schedule(rng: random.Random, malformed: int, valid: int) -> Iterator[str]:
    """The order of the run after the first (warm-up) valid study: batches, attacks, studies."""
    items = ["batch"] * ((malformed + 9) // 10)
    items += ["pdu"] * len(PDU_ATTACKS) + ["p-data"] * 2 + ["valid"] * (valid - 1)
    rng.shuffle(items)
    yield from items


def run_fuzz(
    folder: Path,
    *,
    malformed: int = 200,
    valid: int = 2,
    seed: int = 0,
    timeout: float = 180.0,
    progress: Callable[[str], None] | None = None,
) -> FuzzReport:
    """Run the fuzz campaign against a fresh node in ``folder``; its report."""
    assert valid >= 1, "the first valid study warms the node up"
    say = progress or (lambda _: None)
    rng = random.Random(seed)
    report = FuzzReport(seed, malformed)
    started = time.monotonic()
    pacs = start_receiver("PACS")
    node = Node.start(folder, pacs, CAD_NODE_ACSE_TIMEOUT_SECONDS=str(ACSE_TIMEOUT))
    try:
        first = valid_study()
        study = ValidStudy(first[0].StudyInstanceUID, send_datasets(node.port, first))
        report.valid.append(study)
        wait_until(lambda: node.delivered(study.uid), timeout, "the warm-up study's results")
        report.rss_before = rss_bytes(node.pid)
        say(f"warm-up study delivered; RSS {report.rss_before / 2**20:.0f} MiB")

        mutator = Mutator(rng, study.uid)
        files = folder / "mutants"
        files.mkdir(exist_ok=True)
        sent = 0
        attacks = iter(sorted(PDU_ATTACKS))
        for item in _schedule(rng, malformed, valid):
            if item == "batch":
                mutator.new_study()
                batch = [mutator.make() for _ in range(min(10, malformed - sent))]
                paths = []
                for i, mutant in enumerate(batch):
                    path = files / f"{sent + i:05d}-{mutant.kind}.dcm"
                    path.write_bytes(mutant.data)
                    paths.append(path)
                for mutant, code in zip(batch, send_files(node.port, paths), strict=True):
                    report.statuses[code] += 1
                    report.by_kind.setdefault(mutant.kind, Counter())[code] += 1
                for path in paths:
                    path.unlink()
                sent += len(batch)
                if sent % 100 < 10:
                    say(f"{sent} malformed stores sent")
            elif item == "pdu":
                kind = next(attacks)
                report.pdu[f"{kind} -> {pdu_attack(node.port, kind)}"] += 1
            elif item == "p-data":
                report.pdu[f"p-data-garbage -> {p_data_garbage(node.port, rng)}"] += 1
            else:
                views = valid_study()
                report.valid.append(
                    ValidStudy(views[0].StudyInstanceUID, send_datasets(node.port, views))
                )

        for study in report.valid:
            with suppress(AssertionError):
                wait_until(lambda s=study: node.delivered(s.uid), timeout, "results")  # type: ignore[misc]
        report.alive = node.process.alive()
        report.echo = report.alive and echo_ok(node.port)
        report.rss_after = rss_bytes(node.pid) if report.alive else 0
        for study in report.valid:
            results = node.deliveries(study.uid).get(1)
            study.analysed = bool(results and results[0] == "done")
            uids = {uid for uid, _ in results[1]} if results else set()
            study.copies = Counter(u for u in pacs.received if u in uids)
            study.copies.update({u: 0 for u in uids - set(study.copies)})
    finally:
        node.stop()
        pacs.stop()
    log = node.log()
    report.tracebacks = log.count("Traceback")
    report.phi = phi_hits({"serve.log": log, "audit DB": database_text(node.data)})
    report.slow_stores = [line for line in log.splitlines() if "slow C-STORE" in line]
    report.seconds = time.monotonic() - started
    return report


# --- the chaos campaign -----------------------------------------------------------------


@dataclass
class Pacs:
    """The destination, across outages: a storage SCP stopped and started on one port."""

    ae_title: str = "PACS"
    current: Receiver | None = None
    port: int = 0
    received: list[tuple[str, str, str]] = field(default_factory=list)
    """(study, SOP Instance UID, digest) of every object received, outages included."""

    def start(self) -> None:
        self.current = start_receiver(self.ae_title, self.port)
        self.port = self.current.port

    def stop(self) -> None:
        if self.current is not None:
            r = self.current
            self.received += list(zip(r.studies, r.received, r.digests, strict=True))
            r.stop()
            self.current = None

    def everything(self) -> list[tuple[str, str, str]]:
        r = self.current
        now = list(zip(r.studies, r.received, r.digests, strict=True)) if r else []
        return self.received + now


@dataclass
class StudyOutcome:
    uid: str
    acknowledged: set[str] = field(default_factory=set)
    stored: set[str] = field(default_factory=set)
    jobs: dict[int, str] = field(default_factory=dict)
    """State of the job of each revision."""
    results: int = 0
    """Result objects the node recorded for its jobs."""
    missing: int = 0
    """Recorded results that never reached the PACS."""
    identical_resends: int = 0
    changed_resends: int = 0
    """The same SOP Instance UID received again with other bytes."""
    unknown: int = 0
    """Objects of this study at the PACS that no job of the node records (a doubled report)."""


@dataclass
class ChaosReport:
    seed: int
    studies: list[StudyOutcome] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    alive: bool = False
    phi: list[str] = field(default_factory=list)
    tracebacks: int = 0
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return sum(len(s.acknowledged - s.stored) for s in self.studies)

    def format(self) -> str:
        acked = sum(len(s.acknowledged) for s in self.studies)
        stored = sum(len(s.acknowledged & s.stored) for s in self.studies)
        lines = [f"chaos: {len(self.studies)} studies, seed {self.seed}, {self.seconds:.0f} s"]
        lines += [f"  event (from the node's start): {e}" for e in self.events]
        lines.append(f"images acknowledged {acked}, stored {stored}, lost {self.lost}")
        for s in self.studies:
            jobs = ", ".join(f"rev {r}: {state}" for r, state in sorted(s.jobs.items()))
            lines.append(
                f"  {s.uid[-12:]}: jobs [{jobs}]; results {s.results}, missing {s.missing}, "
                f"doubled {s.unknown}, identical re-sends {s.identical_resends}, "
                f"changed re-sends {s.changed_resends}"
            )
        lines.append(f"node alive: {self.alive}; tracebacks logged: {self.tracebacks}")
        lines.append("patient data in logs/audit DB: " + (", ".join(self.phi) or "none"))
        return "\n".join(lines)


def _send_until_acknowledged(
    node: Node, datasets: list[Dataset], deadline: float
) -> tuple[set[str], int]:
    """Send like a modality: whatever got no Success is sent again once the node is back."""
    acked: set[str] = set()
    attempts = 0
    while time.monotonic() < deadline:
        left = [ds for ds in datasets if ds.SOPInstanceUID not in acked]
        if not left:
            break
        attempts += 1
        with suppress(Exception):
            for ds, code in zip(left, send_datasets(node.port, left), strict=False):
                if code == dicom_status.SUCCESS:
                    acked.add(str(ds.SOPInstanceUID))
        if len(acked) < len(datasets):
            time.sleep(0.5)
    return acked, attempts


def run_chaos(
    folder: Path,
    *,
    studies: int = 3,
    associations: int = 3,
    kills: int = 1,
    outage_seconds: float = 3.0,
    seed: int = 0,
    timeout: float = 240.0,
    delivery_attempts: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ChaosReport:
    """Send ``studies`` four-view studies over ``associations`` associations while the node is
    SIGKILLed ``kills`` times at random moments and the PACS is down once for
    ``outage_seconds``; then wait for every result and count what reached the PACS.

    ``delivery_attempts`` shortens the node's retry schedule (that many attempts, backoff 1 s
    capped at 2 s), so that an outage can outlast it: delivery must then go on by itself.
    """
    say = progress or (lambda _: None)
    rng = random.Random(seed)
    report = ChaosReport(seed)
    started = time.monotonic()
    pacs = Pacs()
    pacs.start()
    schedule = (
        {
            "CAD_NODE_DELIVERY_MAX_ATTEMPTS": str(delivery_attempts),
            "CAD_NODE_DELIVERY_BACKOFF_MAX_SECONDS": "2",
        }
        if delivery_attempts
        else {}
    )
    node = Node.start(folder, pacs.current, **schedule)  # type: ignore[arg-type]
    all_views = [valid_study() for _ in range(studies)]
    images = [ds for views in all_views for ds in views]
    chunks = [images[i::associations] for i in range(associations)]
    window = 1.0 + 0.5 * studies
    """Kills fall in this many seconds after the node is up: while images come in and are
    analysed."""
    lock = threading.Lock()
    stop = threading.Event()
    t0 = time.monotonic()  # the node is up: the plan's clock starts

    def chaos() -> None:
        moments = sorted(rng.uniform(0.2, window) for _ in range(kills))
        outage_at = rng.uniform(0.5, window + 2)
        plan = [(t, "kill") for t in moments] + [(outage_at, "outage")]
        for at, what in sorted(plan):
            if stop.wait(max(0.0, at - (time.monotonic() - t0))):
                return
            with lock:
                if what == "kill":
                    node.process.kill()
                    report.events.append(f"{time.monotonic() - t0:.1f} s: node SIGKILLed")
                    node.process.start()
                    wait_listening(node.port, timeout=60)
                    report.events.append(f"{time.monotonic() - t0:.1f} s: node restarted")
                else:
                    pacs.stop()
                    report.events.append(
                        f"{time.monotonic() - t0:.1f} s: PACS down for {outage_seconds:g} s"
                    )
            if what == "outage":
                stop.wait(outage_seconds)
                pacs.start()
                report.events.append(f"{time.monotonic() - t0:.1f} s: PACS back")

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    try:
        acked: set[str] = set()
        senders = []
        results: list[set[str]] = [set() for _ in chunks]

        def send(i: int) -> None:
            results[i], _ = _send_until_acknowledged(node, chunks[i], started + timeout)

        for i in range(len(chunks)):
            t = threading.Thread(target=send, args=(i,), daemon=True)
            t.start()
            senders.append(t)
        for t in senders:
            t.join()
        for r in results:
            acked |= r
        say(f"all images acknowledged after {time.monotonic() - started:.0f} s")
        chaos_thread.join()
        uids = [views[0].StudyInstanceUID for views in all_views]
        with suppress(AssertionError):
            wait_until(
                lambda: all(_settled(node, uid) for uid in uids),
                max(10.0, started + timeout - time.monotonic()),
                "all results delivered",
                interval=0.5,
            )
        report.alive = node.process.alive()
        received = pacs.everything()
        for views, uid in zip(all_views, uids, strict=True):
            report.studies.append(_outcome(node, uid, views, acked, received))
    finally:
        stop.set()
        node.stop()
        pacs.stop()
    log = node.log()
    report.tracebacks = log.count("Traceback")
    report.phi = phi_hits({"serve.log": log, "audit DB": database_text(node.data)})
    report.seconds = time.monotonic() - started
    return report


def _settled(node: Node, study_uid: str) -> bool:
    """The study is complete (no late image waits for its quiet period) and every revision's
    job is done with its results sent (or had nothing new to report)."""
    engine = node.engine()
    try:
        with engine.connect() as conn:
            study = conn.execute(
                select(Study.state, Study.revision).where(Study.study_instance_uid == study_uid)
            ).first()
    finally:
        engine.dispose()
    if study is None or study[0] != "complete":
        return False
    jobs = node.deliveries(study_uid)
    return set(jobs) >= set(range(1, int(study[1]) + 1)) and all(
        state == "unchanged" or (state == "done" and sends and all(s == "sent" for _, s in sends))
        for state, sends in jobs.values()
    )


def _outcome(
    node: Node,
    uid: str,
    views: list[Dataset],
    acked: set[str],
    received: list[tuple[str, str, str]],
) -> StudyOutcome:
    out = StudyOutcome(uid, acknowledged={str(ds.SOPInstanceUID) for ds in views} & acked)
    out.stored = {
        sop for sop in out.acknowledged if (node.data / "spool" / uid / f"{sop}.dcm").exists()
    }
    engine = node.engine()
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Instance.sop_instance_uid).where(Instance.outcome == "stored")
            ).all()
        in_db = {str(r[0]) for r in rows}
    finally:
        engine.dispose()
    out.stored &= in_db
    jobs = node.deliveries(uid)
    out.jobs = {rev: state for rev, (state, _) in jobs.items()}
    recorded = {sop for _, sends in jobs.values() for sop, _ in sends}
    out.results = len(recorded)
    at_pacs: dict[str, list[str]] = {}
    for study, sop, digest in received:
        if study == uid:
            at_pacs.setdefault(sop, []).append(digest)
    out.missing = len(recorded - set(at_pacs))
    out.unknown = len(set(at_pacs) - recorded)
    for digests in at_pacs.values():
        out.identical_resends += sum(1 for d in digests[1:] if d == digests[0])
        out.changed_resends += sum(1 for d in digests[1:] if d != digests[0])
    return out
