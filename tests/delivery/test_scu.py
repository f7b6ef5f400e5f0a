"""The C-STORE SCU (delivery/scu.py) against a real storage SCP on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import mammogram, write
from receiver import Receiver, start_receiver
from services import free_port

from cad_node import dicom_status
from cad_node.delivery.scu import send_files
from cad_node.settings import Destination
from cad_node.sop_classes import SECONDARY_CAPTURE


@pytest.fixture
def pacs() -> Iterator[Receiver]:
    receiver = start_receiver("PACS", require_calling_aet=["CADNODE"])
    yield receiver
    receiver.stop()


def _to(receiver: Receiver, ae_title: str | None = None) -> Destination:
    return Destination(ae_title=ae_title or receiver.ae_title, host="127.0.0.1", port=receiver.port)


def _files(tmp_path: Path) -> list[Path]:
    """Two mammograms and a secondary capture: two SOP classes on one association."""
    return [
        write(mammogram(seed=1), tmp_path),
        write(mammogram(sop_class=SECONDARY_CAPTURE, seed=2), tmp_path),
        write(mammogram(laterality="R", seed=3), tmp_path),
    ]


def test_every_file_is_delivered_in_order_with_the_peers_status(
    pacs: Receiver, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    outcomes = send_files(_to(pacs), files, calling_ae="CADNODE", timeout=10)
    assert [o.path for o in outcomes] == files
    assert [o.sop_instance_uid for o in outcomes] == [p.stem for p in files]
    assert pacs.received == [p.stem for p in files]
    assert all(o.delivered and o.status == dicom_status.SUCCESS for o in outcomes)


def test_an_unreadable_file_fails_alone(pacs: Receiver, tmp_path: Path) -> None:
    files = _files(tmp_path)
    broken = tmp_path / "1.2.3.4.dcm"
    broken.write_text("not DICOM")
    outcomes = send_files(_to(pacs), [files[0], broken, files[1]], calling_ae="CADNODE")
    assert [o.delivered for o in outcomes] == [True, False, True]
    assert outcomes[1].sop_instance_uid == "1.2.3.4" and outcomes[1].status is None
    assert outcomes[1].error is not None and outcomes[1].error.startswith("unreadable")
    assert pacs.received == [files[0].stem, files[1].stem]


def test_a_refusal_is_not_delivered_and_names_its_status(pacs: Receiver, tmp_path: Path) -> None:
    pacs.status = dicom_status.OUT_OF_RESOURCES
    [outcome] = send_files(_to(pacs), _files(tmp_path)[:1], calling_ae="CADNODE")
    assert not outcome.delivered
    assert outcome.status == dicom_status.OUT_OF_RESOURCES
    assert outcome.error == "refused with status 0xA700"


@pytest.mark.parametrize(
    "status", [dicom_status.WARNING_COERCION, dicom_status.WARNING_ELEMENTS_DISCARDED]
)
def test_a_warning_status_means_the_peer_stored_it(
    pacs: Receiver, tmp_path: Path, status: int
) -> None:
    pacs.status = status
    [outcome] = send_files(_to(pacs), _files(tmp_path)[:1], calling_ae="CADNODE")
    assert outcome.delivered and outcome.status == status and outcome.error is None


@pytest.mark.parametrize(
    ("called", "calling", "reason"),
    [
        ("OTHER", "CADNODE", "called AE title not recognised"),
        ("PACS", "STRANGER", "calling AE title (ours) not recognised"),
    ],
)
def test_a_rejected_association_fails_every_file_with_the_reason(
    pacs: Receiver, tmp_path: Path, called: str, calling: str, reason: str
) -> None:
    files = _files(tmp_path)
    outcomes = send_files(_to(pacs, called), files, calling_ae=calling)
    assert [o.error for o in outcomes] == [f"association rejected: {reason}"] * len(files)
    assert all(o.status is None and not o.delivered for o in outcomes)
    assert pacs.received == []


def test_nobody_listening_fails_every_file_without_a_status(tmp_path: Path) -> None:
    nobody = Destination(ae_title="PACS", host="127.0.0.1", port=free_port())
    outcomes = send_files(nobody, _files(tmp_path), calling_ae="CADNODE", timeout=5)
    assert len(outcomes) == 3
    assert all(o.status is None and not o.delivered for o in outcomes)
    assert {o.error for o in outcomes} == {"cannot connect or association aborted"}


def test_only_unreadable_files_open_no_association(pacs: Receiver, tmp_path: Path) -> None:
    missing = tmp_path / "1.2.9.dcm"
    [outcome] = send_files(_to(pacs, "OTHER"), [missing], calling_ae="CADNODE")
    assert outcome.error == "unreadable: FileNotFoundError"  # not a rejection: never associated
    assert pacs.received == []
