"""The installed default model, loaded for inference: verified, scored, matching its card."""

from __future__ import annotations

import numpy as np

from cad_node.inference.model import load_cad_model
from cad_node.model_folder import MODELS_DIR, default_model_path, read_manifest, validation_warning


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
