"""The NYU GMIC sample exam through ``cad-node predict``: where the marks fall on its masks.

One exam (right breast benign, with the radiologists' lesion masks; left breast normal) is
not evidence of accuracy, and the model was trained on digitised film MLO views, not on
digital mammograms. The test checks what must hold whatever the model finds (every mark lies
on the breast of its own image) and prints where the marks fall relative to the masks
(``pytest -s``). The masks are on GMIC's 2944x1920 model grid, the image resized to it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from factories import mammogram, write
from helpers import IN_CI, SHARED_MAMMO
from PIL import Image
from pydicom.uid import generate_uid

from cad_node.cli import main

NYU_DIR = SHARED_MAMMO / "nyu_gmic_exam0"
VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))


def exam_files(folder: Path) -> dict[str, Path]:
    """The four PNGs as MG DICOMs of one study (no pixel spacing: the PNGs do not carry it)."""
    study = generate_uid()
    files = {}
    for i, (lat, view) in enumerate(VIEWS):
        with Image.open(NYU_DIR / "images" / f"0_{lat}-{view}.png") as img:
            pixels = np.asarray(img, dtype=np.uint16)
        ds = mammogram(
            study_uid=study, laterality=lat, view=view, rows=pixels.shape[0],
            cols=pixels.shape[1], seed=i,
        )  # fmt: skip
        del ds.ImagerPixelSpacing
        ds.PatientID = "NYU-GMIC-EXAM0"
        ds.PixelData = pixels.tobytes()
        files[f"{lat}-{view}"] = write(ds, folder, f"{lat}-{view}.dcm")
    return files


def lesion_mask(view: str, shape: tuple[int, int]) -> np.ndarray:
    """The benign lesion mask of a right view on the image's own pixel grid."""
    with Image.open(NYU_DIR / "segmentation" / f"0_{view}_benign.png") as img:
        resized = img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


def where(detection: dict[str, float], mask: np.ndarray) -> dict[str, Any]:
    """A mark against the mask: inside it or not, and its distance to the mask's centre in
    lesion radii (the radius of a disc of the mask's area)."""
    rows, cols = np.nonzero(mask)
    radius = math.sqrt(mask.sum() / math.pi)
    x, y = detection["x"], detection["y"]
    r, c = round(y), round(x)
    inside = 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and bool(mask[r, c])
    distance = math.hypot(y - rows.mean(), x - cols.mean()) / radius
    return {"score": detection["score"], "inside": inside, "radii_from_centre": round(distance, 2)}


@pytest.mark.slow
@pytest.mark.skipif(not NYU_DIR.is_dir() and not IN_CI, reason="NYU sample exam not available")
def test_nyu_exam_marks_lie_on_the_breast_and_are_reported_against_the_masks(
    tmp_path: Path,
) -> None:
    files = exam_files(tmp_path / "exam")
    result = CliRunner().invoke(
        main, ["predict", *map(str, files.values()), "--json", "--heatmaps", str(tmp_path / "png")]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[: result.output.rindex("}") + 1])
    (study,) = payload["studies"]
    assert sorted(study["breasts"]) == ["L", "R"] and study["errors"] == []
    images = {i["view"]: i for i in study["images"]}
    assert sorted(images) == sorted(files)
    report: dict[str, Any] = {}
    for view, image in sorted(images.items()):
        with Image.open(NYU_DIR / "images" / f"0_{view}.png") as img:
            pixels = np.asarray(img)
        tissue = pixels > 0.05 * pixels.max()
        for d in image["detections"]:
            r, c = round(d["y"]), round(d["x"])
            assert 0 <= r < pixels.shape[0] and 0 <= c < pixels.shape[1], (view, d)
            near = tissue[max(r - 8, 0) : r + 9, max(c - 8, 0) : c + 9]
            assert near.any(), f"{view}: mark at x={d['x']}, y={d['y']} is off the breast"
        if view.startswith("R"):
            mask = lesion_mask(view, pixels.shape)
            assert mask.any() and not (mask & ~tissue).sum() > 0.05 * mask.sum()
            report[view] = [where(d, mask) for d in image["detections"]]
        else:
            report[view] = f"{len(image['detections'])} mark(s) on a normal breast"
    scores = {lat: round(b["score"], 3) for lat, b in study["breasts"].items()}
    print(f"\nNYU GMIC exam 0 (right benign, left normal), model {payload['model']['name']}")
    print(f"breast scores {scores}")
    for view, found in report.items():
        print(f"  {view}: {found}")
    assert len(list((tmp_path / "png").rglob("*.png"))) == 4
