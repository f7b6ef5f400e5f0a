"""Helpers the tests share (import them from here; conftest only holds fixtures)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from peers import dcmtk_tool
from pydicom.dataset import Dataset

from cad_node.settings import Settings

IN_CI = bool(os.environ.get("CI"))
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MAMMO = Path(
    os.environ.get("CAD_NODE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data" / "mammo")
)
"""Real mammography samples (mini-MIAS, NYU GMIC exam), beside the checkout as ``../shared``."""


def missing_peer(message: str) -> NoReturn:
    """A peer the tests need is not installed: a skip locally, a failure in CI."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_dcmtk(name: str) -> str:
    """The path of a dcmtk tool; missing is a skip locally but a failure in CI."""
    path = dcmtk_tool(name)
    if path is None:
        missing_peer(f"dcmtk's {name} not installed (scripts/bootstrap --test installs it)")
    assert path is not None
    return path


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "host": "127.0.0.1",
        "port": 0,
        "study_quiet_seconds": 1.0,
        "min_free_mb": 0,
        "http_port": 0,  # tests that want the web server pass a free port
    }
    values.update(overrides)
    return Settings(**values)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate`` returns something truthy; fail clearly after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def predecessor_uids(sr: Dataset) -> list[str]:
    """The SOP Instance UIDs an SR names in its Predecessor Documents Sequence."""
    return [
        str(item.ReferencedSOPInstanceUID)
        for study in sr.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    ]
