"""CAD_NODE_ALLOWED_CALLING_AES entries pinned to a host or network, over real associations."""

from __future__ import annotations

from collections.abc import Callable

from helpers import wait_for
from scu import associate

from cad_node.node import Node


def test_an_allowed_ae_from_another_host_is_rejected_and_audited(
    node_factory: Callable[..., Node],
) -> None:
    node = node_factory(
        allowed_calling_aes=["MODALITY1@127.0.0.1", "PACS@10.9.0.0/16", "WS@localhost", "ANY"]
    )
    for calling in ("MODALITY1", "WS", "ANY"):
        assoc = associate(node.scp.port, calling=calling)
        assert assoc.is_established, calling
        assoc.release()
    pinned = associate(node.scp.port, calling="PACS")
    assert pinned.is_rejected
    assert pinned.acceptor.primitive.result_source == 1  # DICOM UL service-user
    assert pinned.acceptor.primitive.diagnostic == 3  # calling AE title not recognised
    event = wait_for(lambda: node.repo.recent_events(level="warning"))[0]
    assert event.kind == "association.rejected" and event.calling_ae == "PACS"
    assert "allowed only from 10.9.0.0/16" in event.detail
    assert "called from 127.0.0.1" in event.detail
    unknown = associate(node.scp.port, calling="INTRUDER")
    assert unknown.is_rejected and unknown.acceptor.primitive.diagnostic == 3


def test_an_ae_listed_for_several_hosts_may_call_from_any_of_them(
    node_factory: Callable[..., Node],
) -> None:
    node = node_factory(allowed_calling_aes="PACS@10.0.0.1,PACS@127.0.0.0/8")
    assoc = associate(node.scp.port, calling="PACS")
    assert assoc.is_established
    assoc.release()
