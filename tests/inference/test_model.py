"""The installed default model, loaded for inference: verified, scored, matching its card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cad_node.errors import ModelError
from cad_node.inference.model import CadModel, find_cam_layer, load_cad_model
from cad_node.model_folder import MODELS_DIR, default_model_path, read_manifest, validation_warning
from tests.model_factory import SIZE, BrightSpotNet, bright_spot_model, in_memory_manifest


def test_the_installed_default_model_loads_verified_and_matches_its_card() -> None:
    """models/DEFAULT names a trained model whose weights pass the sha256 check."""
    folder = default_model_path()
    assert folder.parent == MODELS_DIR
    manifest = read_manifest(folder)
    assert not manifest.smoke_test
    assert (folder / "weights.safetensors").stat().st_size <= 50 * 2**20
    assert manifest.training_data["n_images"] == 258
    auc = manifest.metrics.cross_validated["auc"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"{auc.value:.3f}" in card
    assert "research use only" in card
    assert "not a diagnosis" in card
    if validation_warning(manifest):  # the card must say what the node warns about
        assert "Not better than chance" in card

    model = load_cad_model(folder, "cpu")
    size = model.preprocess_config.size
    batch = np.zeros((2, 1, *size), np.float32)
    batch[1, 0, size[0] // 4 : size[0] * 3 // 4, : size[1] // 2] = 0.6
    scores, maps = model.scores_and_heatmaps(batch)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    assert maps.shape == (2, *size)


class TwoLogitNet(torch.nn.Module):
    """BrightSpotNet's logit second, its negation first: which logit scores must matter."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = BrightSpotNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.inner(x)
        return torch.cat([-logit, logit], dim=1)


def test_the_manifest_names_which_logit_is_the_score() -> None:
    one = bright_spot_model()
    manifest = in_memory_manifest(
        **{**one.manifest.to_dict(), "score_output": 1, "architecture": "two-logit"}
    )
    module = TwoLogitNet().eval()
    two = CadModel(module, manifest, torch.device("cpu"), Path("."))
    two.cam_layer = find_cam_layer(module, SIZE, manifest.score_output)
    assert two.cam_layer == "inner.act"
    batch = np.random.default_rng(0).random((2, 1, *SIZE), dtype=np.float32)
    batch[1, 0, 20:30, 20:30] = 1.0
    scores, maps = two.scores_and_heatmaps(batch)
    expected_scores, expected_maps = one.scores_and_heatmaps(batch)
    assert np.allclose(scores, expected_scores, atol=1e-6)
    assert np.allclose(two.scores(batch), expected_scores, atol=1e-6)
    assert np.allclose(maps, expected_maps, atol=1e-6)
    with pytest.raises(
        ModelError, match="2 output\\(s\\) per image; its manifest's score_output 2"
    ):
        find_cam_layer(module, SIZE, 2)
