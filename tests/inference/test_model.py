"""Model folders: the installed default model, and how a model's validation is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cad_node.errors import ModelError
from cad_node.inference.model import (
    MODELS_DIR,
    default_model_path,
    load_cad_model,
    validation_warning,
)
from cad_node.training.export import read_manifest


def manifest_with_auc(value: float, low: float, high: float) -> dict[str, Any]:
    return {
        "name": "m",
        "version": "1",
        "metrics": {"cross_validated": {"auc": {"value": value, "ci95": [low, high]}}},
    }


def test_a_model_whose_interval_is_above_chance_is_validated() -> None:
    assert validation_warning(manifest_with_auc(0.85, 0.78, 0.91)) is None


def test_a_model_whose_interval_includes_chance_is_flagged() -> None:
    warning = validation_warning(manifest_with_auc(0.55, 0.45, 0.65))
    assert warning is not None
    assert "0.55 (95% CI 0.45-0.65)" in warning
    assert "not shown to be better than chance" in warning


def test_unmeasured_and_smoke_test_models_are_flagged() -> None:
    assert "unmeasured" in str(validation_warning({"name": "m", "version": "1", "metrics": {}}))
    assert "smoke-test" in str(validation_warning({"smoke_test": True}))


def test_an_unreadable_manifest_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no manifest\.json"):
        read_manifest(tmp_path)


def test_the_installed_default_model_loads_verified_and_matches_its_card() -> None:
    """models/DEFAULT names a trained model whose weights pass the sha256 check."""
    folder = default_model_path()
    assert folder.parent == MODELS_DIR
    manifest = read_manifest(folder)
    assert not manifest.get("smoke_test")
    assert (folder / "weights.safetensors").stat().st_size <= 50 * 2**20
    assert manifest["training_data"]["n_images"] == 258
    auc = manifest["metrics"]["cross_validated"]["auc"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"{auc['value']:.3f}" in card
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
