"""Shared fixtures of the training tests: a handful of real mini-MIAS films."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import IN_CI, SHARED_MAMMO

MIAS_DIR = SHARED_MAMMO / "mini_mias"
# Six patients (both breasts each): three with a malignant film, three without.
MIAS_SUBSET = (
    "mdb023", "mdb024", "mdb171", "mdb172", "mdb241", "mdb242",
    "mdb003", "mdb004", "mdb005", "mdb006", "mdb301", "mdb302",
)  # fmt: skip


@pytest.fixture(scope="session")
def mias_dir() -> Path:
    """The real mini-MIAS folder (tests skip when it is absent)."""
    if not (MIAS_DIR / "mias_labels.csv").is_file() and not IN_CI:
        pytest.skip("mini-MIAS data not available")
    return MIAS_DIR


def _subset(labels: Path, out: Path) -> Path:
    """The MIAS_SUBSET rows of a labels CSV, image paths relative to the mini-MIAS folder."""
    with labels.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["refnum"] in MIAS_SUBSET]
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.fixture(scope="session")
def mias_subset_csv(mias_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labels CSV of a few real films (the 512 px set)."""
    return _subset(mias_dir / "mias_labels.csv", tmp_path_factory.mktemp("mias") / "subset.csv")


@pytest.fixture(scope="session")
def mias_1024_subset_csv(mias_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same films at their native 200 µm (``mias_1024``)."""
    out = tmp_path_factory.mktemp("mias1024") / "subset_1024.csv"
    return _subset(mias_dir / "mias_labels_1024.csv", out)
