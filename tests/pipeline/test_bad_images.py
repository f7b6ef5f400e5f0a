"""One bad image costs that image its result, never the study's: the other views are analysed,
the job is done on its first attempt, and expected bad input is logged without a traceback."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import four_views
from helpers import wait_for
from model_factory import tiny_model_folder
from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import RLELossless
from scu import store

from cad_node.audit.jobs import JobRepository
from cad_node.audit.views import JobRecord
from cad_node.reporting import HEATMAP_SC, MAMMO_CAD_SR, TID1500_SR


def _finished_job(node: Any, uid: str) -> JobRecord:
    def finished() -> JobRecord | None:
        jobs = JobRepository(node.engine).jobs_of_study(uid)
        return jobs[0] if jobs and jobs[0].state in ("done", "failed") else None

    job: JobRecord = wait_for(finished, timeout=90)
    return job


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logged = [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    assert not logged, f"traceback logged by {[r.name for r in logged]}"


def _objects(node: Any, job: JobRecord, kind: str) -> list[Dataset]:
    folder = node.settings.outbox_dir / f"job-{job.job_id}"
    return [dcmread(p) for p in sorted(folder.iterdir()) if p.name.startswith(f"{kind}_")]


@pytest.mark.slow
def test_invalid_birth_date_in_one_view_still_gives_every_view_a_result(
    node_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Accepted at ingest, and analysed: the results leave the unreadable date empty."""
    node = node_factory(pipeline=True, model=str(tiny_model_folder(tmp_path / "model")))
    views = four_views()
    uid = views[0].StudyInstanceUID
    # L-CC, the view the results take their patient and study attributes from
    views[0].add(DataElement(0x00100030, "DA", "1907-11-23", validation_mode=config.IGNORE))
    with caplog.at_level(logging.WARNING):
        assert store(node.scp.port, views) == [0, 0, 0, 0]
        job = _finished_job(node, uid)
    assert (job.state, job.attempts, job.error) == ("done", 1, None)
    result = job.result
    assert sorted(i["view"] for i in result["images"]) == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    assert result["errors"] == []
    objects = [
        o for kind in (MAMMO_CAD_SR, TID1500_SR, HEATMAP_SC) for o in _objects(node, job, kind)
    ]
    assert len(objects) == 6
    for ds in objects:
        assert ds.PatientBirthDate == "" and ds.PatientID == views[0].PatientID
    _no_tracebacks(caplog)
    assert not [r for r in caplog.records if "1907" in r.getMessage()], "the date was logged"


def _cut_inside_header(path: Path) -> None:
    os.truncate(path, 200)  # inside the file meta


def _truncate_pixel_data(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 3000)


def _unknown_vr(path: Path) -> None:
    """BitsAllocated with VR ZZ: what this node refuses now, stored before it did."""
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"\x28\x00\x00\x01US\x02\x00", b"\x28\x00\x00\x01ZZ\x02\x00"))


def _corrupt_rle_segments(path: Path) -> None:
    raw = path.read_bytes()
    frame = get_frame(dcmread(path).PixelData, 0, number_of_frames=1)
    start = raw.index(frame) + 64  # keep the RLE header, replace the runs
    noise = np.random.default_rng(3).integers(0, 256, len(frame) - 64, dtype=np.uint8)
    path.write_bytes(raw[:start] + noise.tobytes() + raw[start + len(frame) - 64 :])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "rle"),
    [
        (_truncate_pixel_data, False),
        (_cut_inside_header, False),
        (_unknown_vr, False),
        (_corrupt_rle_segments, True),
    ],
    ids=["pixel-data-truncated", "file-cut-in-header", "unknown-vr", "rle-segments-corrupt"],
)
def test_an_image_damaged_after_ingest_is_its_own_error(
    node_factory: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
    rle: bool,
) -> None:
    views = four_views(rows=128, cols=96)
    if rle:
        for ds in views:
            ds.compress(RLELossless)
    uid = views[0].StudyInstanceUID
    ingest = node_factory(pipeline=False)
    assert store(ingest.scp.port, views) == [0, 0, 0, 0]
    wait_for(lambda: ingest.repo.show_study(uid).state == "complete", timeout=10)
    ingest.stop()
    victim = views[1]
    damage(ingest.spool.path_of(f"{uid}/{victim.SOPInstanceUID}.dcm"))

    with caplog.at_level(logging.WARNING):
        node = node_factory(pipeline=True, model=str(tiny_model_folder(tmp_path / "model")))
        job = _finished_job(node, uid)
    assert (job.state, job.attempts, job.error) == ("done", 1, None)
    result = job.result
    [error] = result["errors"]
    assert error["sop_instance_uid"] == victim.SOPInstanceUID
    assert sorted(i["view"] for i in result["images"]) == ["L-CC", "R-CC", "R-MLO"]
    warned = [r for r in caplog.records if victim.SOPInstanceUID in r.getMessage()]
    assert warned and all(r.levelno == logging.WARNING for r in warned)
    _no_tracebacks(caplog)
