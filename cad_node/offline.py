"""Offline analysis of DICOM files (``cad-node predict``): group, analyse, write the results.

The command line parses options and prints; this module does the work, so that it can be called
and tested without click. Nothing here is sent anywhere.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from cad_node.inference.model import CadModel
    from cad_node.results import StudyAnalysis

GroupBy = Literal["study", "patient"]


@dataclass(frozen=True)
class OfflineOptions:
    """How to group the images, and where (if anywhere) to write what the node would produce."""

    group_by: GroupBy = "study"
    heatmap_dir: Path | None = None
    """A heatmap overlay PNG per analysed image, in a folder per study."""
    dicom_dir: Path | None = None
    """The result objects the node would send (SRs, heatmap secondary captures), per study."""

    @property
    def wants_heatmaps(self) -> bool:
        return self.heatmap_dir is not None or self.dicom_dir is not None


class InputFiles(NamedTuple):
    """The DICOM datasets found in the inputs, and the files that were not DICOM."""

    datasets: list[Dataset]
    skipped: list[Path]


def read_inputs(paths: Sequence[Path]) -> InputFiles:
    """The DICOM datasets in ``paths`` (folders searched recursively) and the files skipped."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    found: list[Dataset] = []
    skipped: list[Path] = []
    for file in files:
        try:
            found.append(dcmread(file, defer_size="1 MB"))
        except (InvalidDicomError, OSError):
            skipped.append(file)
    return InputFiles(found, skipped)


def group_datasets(datasets: Sequence[Dataset], group_by: GroupBy) -> dict[str, list[Dataset]]:
    """Images by StudyInstanceUID, or by PatientID without its side/view text (CBIS-DDSM)."""
    from cad_node.assembly import patient_key

    groups: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        key = patient_key(ds) if group_by == "patient" else str(ds.get("StudyInstanceUID", ""))
        groups[key or "unknown"].append(ds)
    return dict(groups)


def analyse_offline(
    datasets: Sequence[Dataset], model: CadModel, options: OfflineOptions
) -> list[StudyAnalysis]:
    """Analyse each group of images in input order; write overlays and objects if asked."""
    from cad_node.inference.predict import analyse_study

    studies = []
    for key, group in group_datasets(datasets, options.group_by).items():
        # Results go into the study of the group's first image (when grouped by patient the
        # images may come from several studies).
        uid = str(group[0].get("StudyInstanceUID", key))
        analysis = analyse_study(uid, group, model, heatmaps=options.wants_heatmaps)
        studies.append(analysis)
        if options.dicom_dir is not None and (analysis.images or analysis.errors):
            write_result_objects(analysis, group, model, options.dicom_dir / safe_name(uid))
        if options.heatmap_dir is not None:
            write_overlays(analysis, group, model, options.heatmap_dir / safe_name(uid))
    return studies


def write_result_objects(
    analysis: StudyAnalysis, datasets: Sequence[Dataset], model: CadModel, folder: Path
) -> None:
    """Save the SRs and heatmap secondary captures the node would send for this study."""
    from cad_node.reporting import Algorithm, build_result_objects

    folder.mkdir(parents=True, exist_ok=True)
    for kind, obj in build_result_objects(analysis, datasets, Algorithm.from_model(model)):
        obj.save_as(folder / f"{kind}_{obj.SOPInstanceUID}.dcm", enforce_file_format=True)


def write_overlays(
    analysis: StudyAnalysis, datasets: Sequence[Dataset], model: CadModel, folder: Path
) -> None:
    """Save one overlay PNG per analysed image: the labelled overlay of the secondary capture."""
    from PIL import Image

    from cad_node.reporting import Algorithm
    from cad_node.reporting.common import AnalysedImage
    from cad_node.reporting.overlay import overlay_pixels

    folder.mkdir(parents=True, exist_ok=True)
    algorithm = Algorithm.from_model(model)
    sources = {str(ds.SOPInstanceUID): ds for ds in datasets}
    for image in analysis.images:
        rgb = overlay_pixels(AnalysedImage(image, sources[image.sop_instance_uid]), algorithm)
        Image.fromarray(rgb).save(folder / f"{image.view}_{image.sop_instance_uid}.png")


def safe_name(text: str) -> str:
    """``text`` as a folder name: anything but letters, digits and ``.-_`` becomes ``_``."""
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in text) or "study"
