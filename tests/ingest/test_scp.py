"""The storage SCP over real associations on loopback (pynetdicom as the peer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from factories import four_views, mammogram, write
from helpers import wait_for
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid
from pynetdicom import AE
from scu import associate, store

from cad_node import dicom_status
from cad_node.audit.views import StudyDetail
from cad_node.cli import main
from cad_node.ingest.handlers import StoreTimer
from cad_node.node import Node


def _study(node: Node, uid: str) -> StudyDetail:
    shown = node.repo.show_study(uid)
    assert shown is not None, f"study {uid} unknown"
    return shown


def _complete(node: Node, uid: str, timeout: float = 5.0) -> StudyDetail:
    return wait_for(
        lambda: (s := node.repo.show_study(uid)) and s.state == "complete" and s,
        timeout=timeout,
    )


def test_ingest_does_not_import_the_audit_package() -> None:
    # Ingest records through the repository it is given; what it shares with audit lives in
    # cad_node.domain and cad_node.errors. A fresh interpreter shows what importing it loads.
    probe = (
        "import sys, cad_node.ingest.scp\n"
        "print(sorted(m for m in sys.modules if m.startswith(('cad_node.audit', 'sqlalchemy'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]"


def test_node_leaves_the_process_temporary_folder_alone(node: Node) -> None:
    import tempfile

    assert Path(tempfile.gettempdir()) != node.spool.incoming


def test_echo(node: Node) -> None:
    assoc = associate(node.scp.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == dicom_status.SUCCESS
    assoc.release()


def test_four_views_complete_within_quiet_period(node: Node) -> None:
    views = four_views()
    assert store(node.scp.port, views) == [dicom_status.SUCCESS] * 4
    uid = views[0].StudyInstanceUID
    study = _complete(node, uid, timeout=node.settings.study_quiet_seconds + 2)
    assert study.views == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    assert study.missing_views == []
    # Each acknowledged file is in the spool, byte-identical in content to what was sent.
    for sent in views:
        path = node.spool.path_of(f"{uid}/{sent.SOPInstanceUID}.dcm")
        assert dcmread(path).PixelData == sent.PixelData
    assert list(node.spool.incoming.iterdir()) == []


def test_audit_cli_reports_the_study(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    views = four_views()
    store(node.scp.port, views)
    uid = views[0].StudyInstanceUID
    _complete(node, uid)
    monkeypatch.setenv("CAD_NODE_DATA_DIR", str(node.settings.data_dir))
    result = CliRunner().invoke(main, ["audit", "show", uid, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["study_instance_uid"] == uid
    assert data["status"] == "complete"
    assert data["views"] == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    assert data["missing_views"] == []
    assert len(data["instances"]) == 4 and data["completed_at"]
    listing = CliRunner().invoke(main, ["audit", "studies", "--json"])
    assert [s["study_instance_uid"] for s in json.loads(listing.output)] == [uid]


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_transfer_syntaxes_are_accepted(node: Node, syntax: str) -> None:
    ds = mammogram()
    ds.compress(syntax)
    assert store(node.scp.port, [ds]) == [dicom_status.SUCCESS]
    study = _study(node, ds.StudyInstanceUID)
    assert study.instances[0].transfer_syntax_uid == syntax
    saved = dcmread(node.spool.path_of(f"{ds.StudyInstanceUID}/{ds.SOPInstanceUID}.dcm"))
    assert (saved.pixel_array == ds.pixel_array).all()


def test_monochrome1_is_stored_and_analysable(node: Node) -> None:
    ds = mammogram(photometric="MONOCHROME1")
    assert store(node.scp.port, [ds]) == [dicom_status.SUCCESS]
    assert _study(node, ds.StudyInstanceUID).instances[0].view == "L-CC"


def test_for_processing_and_missing_views_are_recorded(node: Node) -> None:
    study_uid = generate_uid()
    sent = [
        mammogram(study_uid=study_uid, laterality="L", view="CC"),
        mammogram(study_uid=study_uid, laterality="R", view="CC", for_processing=True),
    ]
    assert store(node.scp.port, sent) == [dicom_status.SUCCESS] * 2
    study = _complete(node, study_uid)
    assert study.views == ["L-CC"]
    assert study.missing_views == ["L-MLO", "R-CC", "R-MLO"]
    reasons = {i.not_analysed_reason for i in study.instances}
    assert reasons == {None, "For Processing image"}


def test_truncated_pixel_data_is_refused_and_node_keeps_serving(node: Node) -> None:
    bad = mammogram()
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]
    good = mammogram()
    assert store(node.scp.port, [bad, good]) == [
        dicom_status.CANNOT_UNDERSTAND_PIXEL_DATA,
        dicom_status.SUCCESS,
    ]
    rejected = [
        e for e in node.repo.recent_events(level="warning") if e.kind == "instance.rejected"
    ]
    assert rejected and "truncated" in rejected[0].detail
    assert rejected[0].sop_instance_uid == bad.SOPInstanceUID
    assert not node.repo.is_stored(bad.SOPInstanceUID)
    assert node.repo.is_stored(good.SOPInstanceUID)


def test_missing_study_uid_is_refused(node: Node) -> None:
    ds = mammogram()
    del ds.StudyInstanceUID
    assert store(node.scp.port, [ds]) == [dicom_status.CANNOT_UNDERSTAND_MISSING_UID]
    assert not node.repo.is_stored(ds.SOPInstanceUID)


def test_stream_cut_inside_pixel_data_is_refused(node: Node, tmp_path: Path) -> None:
    path = write(mammogram(rows=256, cols=256), tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 1000])  # PixelData claims more bytes than follow
    assert store(node.scp.port, [path]) == [dicom_status.CANNOT_UNDERSTAND_UNDECODABLE]


def test_stream_cut_inside_small_pixel_data_is_refused(node: Node, tmp_path: Path) -> None:
    """Pixel data small enough to be read at once (not deferred) is checked as well."""
    ds = mammogram(rows=32, cols=32)  # 2 KiB of pixels
    path = write(ds, tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 500])
    assert store(node.scp.port, [path]) == [dicom_status.CANNOT_UNDERSTAND_UNDECODABLE]
    assert not node.repo.is_stored(ds.SOPInstanceUID)


def test_garbage_dataset_is_refused_with_cannot_understand(node: Node, tmp_path: Path) -> None:
    ds = mammogram()
    path = write(ds, tmp_path)
    raw = path.read_bytes()
    body = raw.index(b"\x08\x00\x16\x00")  # first dataset element after the file meta
    path.write_bytes(raw[:body] + bytes(range(256)) * 8)
    [status] = store(node.scp.port, [path])
    assert 0xC200 <= status <= 0xC2FF, hex(status)
    assert store(node.scp.port, [mammogram()]) == [dicom_status.SUCCESS]


def test_instance_uid_mismatch_with_request_is_refused(node: Node, tmp_path: Path) -> None:
    ds = mammogram()
    path = write(ds, tmp_path)
    meta_says = dcmread(path)
    meta_says.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the C-STORE's UID
    meta_says.save_as(path)
    assert store(node.scp.port, [path]) == [dicom_status.DATASET_DOES_NOT_MATCH_SOP_CLASS]


def test_duplicate_is_stored_once(node: Node) -> None:
    ds = mammogram()
    assert store(node.scp.port, [ds, ds]) == [dicom_status.SUCCESS] * 2
    assert store(node.scp.port, [ds]) == [dicom_status.SUCCESS]
    outcomes = [i.outcome for i in _study(node, ds.StudyInstanceUID).instances]
    assert outcomes == ["stored", "duplicate", "duplicate"]
    assert len(list(node.spool.root.rglob("*.dcm"))) == 1


def test_study_split_over_two_associations(node: Node) -> None:
    views = four_views()
    assert store(node.scp.port, views[:2]) == [0, 0]
    assert store(node.scp.port, views[2:]) == [0, 0]
    study = _complete(node, views[0].StudyInstanceUID)
    assert study.views == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    assert study.revision == 1


def test_late_instance_reopens_study_without_a_second_study(node: Node) -> None:
    views = four_views()
    store(node.scp.port, views[:3])
    uid = views[0].StudyInstanceUID
    assert _complete(node, uid).missing_views == ["R-MLO"]
    store(node.scp.port, views[3:])
    study = wait_for(lambda: (s := _study(node, uid)).revision == 2 and s, timeout=5)
    assert study.state == "complete" and study.missing_views == []
    assert [e.kind for e in study.events].count("study.reopened") == 1
    assert len(node.repo.list_studies()) == 1


def test_unknown_calling_ae_is_rejected_and_audited(node_factory: Any) -> None:
    node = node_factory(allowed_calling_aes=["MODALITY1"])
    assoc = associate(node.scp.port, calling="INTRUDER")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.result_source == 1  # DICOM UL service-user
    assert assoc.acceptor.primitive.diagnostic == 3  # calling AE title not recognised
    event = wait_for(lambda: node.repo.recent_events(level="warning"))[0]
    assert event.kind == "association.rejected" and event.calling_ae == "INTRUDER"
    assert "calling AE title not recognised" in event.detail
    allowed = associate(node.scp.port, calling="MODALITY1")
    assert allowed.is_established
    allowed.release()


def test_wrong_called_ae_is_rejected(node: Node) -> None:
    assoc = associate(node.scp.port, called="SOMEONEELSE")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 7  # called AE title not recognised
    assert "called AE title" in wait_for(lambda: node.repo.recent_events(level="warning"))[0].detail


def test_below_disk_reserve_answers_out_of_resources(node_factory: Any) -> None:
    node = node_factory(min_free_mb=2**40)  # a reserve larger than any disk
    ds = mammogram()
    assert store(node.scp.port, [ds]) == [dicom_status.OUT_OF_RESOURCES]
    event = node.repo.recent_events(level="warning")[0]
    assert event.kind == "instance.rejected" and "reserve" in event.detail
    assert list(node.spool.incoming.iterdir()) == []


# Aborting from another thread while the sender's reactor is mid-message makes pynetdicom's
# *sending* side log an invalid state-machine event; the node under test is not involved.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_aborted_transfer_leaves_no_partial_file(node: Node, tmp_path: Path) -> None:
    import threading

    from pynetdicom import _config

    big = mammogram(rows=4096, cols=6144)  # 48 MiB of pixels: the transfer takes a while
    path = write(big, tmp_path)
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(big.SOPClassUID, big.file_meta.TransferSyntaxUID)
    ae.maximum_pdu_size = 16384  # small PDUs: many writes, time to abort mid-way
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="CADNODE")
    assert assoc.is_established
    _config.STORE_SEND_CHUNKED_DATASET = True
    sender = threading.Thread(target=assoc.send_c_store, args=(path,), daemon=True)
    try:
        sender.start()
        wait_for(lambda: list(node.spool.incoming.iterdir()), timeout=10, interval=0.001)
        assoc.abort()
        sender.join(timeout=10)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    wait_for(lambda: not list(node.spool.incoming.iterdir()), timeout=5)
    assert not node.repo.is_stored(big.SOPInstanceUID)
    assert list(node.spool.root.rglob("*.dcm")) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 3 MiB tmpfs: a real filesystem that runs out of space."""
    import subprocess

    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_while_receiving_answers_out_of_resources(
    tiny_disk: Path, node_factory: Any
) -> None:
    node = node_factory(data_dir=tiny_disk / "data")
    too_big = mammogram(rows=2048, cols=1024)  # 4 MiB of pixels on a 3 MiB disk
    assert store(node.scp.port, [too_big]) == [dicom_status.OUT_OF_RESOURCES]
    assert list(node.spool.incoming.iterdir()) == []  # the partial file gave its space back
    event = next(e for e in node.repo.recent_events() if e.kind == "instance.rejected")
    assert event.detail == "disk full while receiving"
    # The node keeps serving: an image that fits is stored.
    assert store(node.scp.port, [mammogram()]) == [dicom_status.SUCCESS]


def test_a_slow_store_logs_where_its_time_went(
    node_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    node = node_factory(slow_store_seconds=1e-6)  # every store is "slow"
    good, bad = mammogram(), mammogram()
    del bad.StudyInstanceUID
    with caplog.at_level("WARNING", logger="cad_node.ingest.handlers"):
        statuses = store(node.scp.port, [good, bad])
    assert statuses == [dicom_status.SUCCESS, dicom_status.CANNOT_UNDERSTAND_MISSING_UID]
    slow = [r.getMessage() for r in caplog.records if "slow C-STORE" in r.getMessage()]
    assert len(slow) == 2
    stored, refused = slow
    assert good.SOPInstanceUID in stored and "answered 0x0000" in stored
    for phase in ("check", "lookup", "spool", "record", "rest"):
        assert f"{phase} " in stored
    assert "spool" not in refused and "answered 0xC" in refused
    assert str(good.PatientName) not in stored  # UIDs and timings only


def test_a_store_within_the_threshold_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    timer = StoreTimer()
    timer.mark("check")
    with caplog.at_level("WARNING", logger="cad_node.ingest.handlers"):
        timer.report_if_slow(3600.0, "1.2.3", dicom_status.SUCCESS)
    assert not caplog.records
    assert [name for name, _ in timer.phases] == ["check", "rest"]
