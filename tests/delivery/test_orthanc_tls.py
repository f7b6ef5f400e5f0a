"""Orthanc's DICOM TLS against the node, both ways, with client certificates on both sides."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from certs import TlsFiles
from factories import mammogram, write
from helpers import IN_CI, wait_for
from services import Orthanc, free_port

from cad_node.delivery.scu import send_files
from cad_node.node import Node
from cad_node.settings import Destination


def test_orthanc_and_the_node_over_mutual_tls(
    node_factory: Callable[..., Node], tls_files: TlsFiles, tmp_path: Path
) -> None:
    if not shutil.which("Orthanc") and not Path("/usr/sbin/Orthanc").exists():
        if IN_CI:
            pytest.fail("Orthanc not installed (scripts/bootstrap --test installs it)")
        pytest.skip("Orthanc not installed")
    node = node_factory(
        tls_port=free_port(),
        tls_only=True,
        tls_cert=tls_files.server.cert,
        tls_key=tls_files.server.key,
        tls_ca=tls_files.ca.bundle,
    )
    orthanc_cert = tls_files.ca.issue("orthanc", "ORTHANC", hosts=("127.0.0.1",), client=True)
    orthanc = Orthanc(
        tmp_path / "orthanc",
        {"cadnode": ("CADNODE", node.scp.port)},
        tls_modalities=("cadnode",),
        options={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(orthanc_cert.cert),
            "DicomTlsPrivateKey": str(orthanc_cert.key),
            "DicomTlsTrustedCertificates": str(tls_files.ca.bundle),
            "DicomTlsRemoteCertificateRequired": True,
        },
    )
    orthanc.start()
    try:
        ds = mammogram()
        study_id = orthanc.upload(write(ds, tmp_path / "modality"))
        orthanc.push_study("cadnode", study_id)  # Orthanc -> node, over TLS
        wait_for(lambda: node.repo.show_study(str(ds.StudyInstanceUID)), timeout=10)

        result = mammogram()
        path = write(result, tmp_path / "results")
        orthanc_tls = Destination(
            ae_title=Orthanc.AE,
            host="127.0.0.1",
            port=orthanc.dicom_port,
            tls=True,
            tls_ca=tls_files.ca.bundle,
            tls_cert=tls_files.client.cert,
            tls_key=tls_files.client.key,
        )
        (outcome,) = send_files(orthanc_tls, [path], calling_ae="CADNODE")  # node -> Orthanc
        assert outcome.delivered, f"{outcome.error}\n{orthanc.log()[-3000:]}"
        found = orthanc.post(
            "/tools/find",
            {"Level": "Instance", "Query": {"SOPInstanceUID": str(result.SOPInstanceUID)}},
        )
        assert len(found) == 1

        anonymous = Destination(
            ae_title=Orthanc.AE,
            host="127.0.0.1",
            port=orthanc.dicom_port,
            tls=True,
            tls_ca=tls_files.ca.bundle,
        )
        (refused,) = send_files(anonymous, [path], calling_ae="CADNODE")
        assert not refused.delivered  # Orthanc requires a client certificate
    finally:
        orthanc.stop()
