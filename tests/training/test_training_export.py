"""Model folders: round trip, checksum, tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cad_node.errors import ModelError
from cad_node.model_folder import load_model_folder, read_manifest
from cad_node.training import architectures as A
from cad_node.training.export import export_model_folder, model_card


def _manifest() -> dict[str, object]:
    ci = {"value": 0.7, "ci95": [0.6, 0.8]}
    return {
        "name": "test-model",
        "version": "0.0.1",
        "architecture": "light",
        "architecture_kwargs": A.default_kwargs("light", fast=True),
        "input": {"spacing_mm": 3.2, "size": [64, 64]},
        "class_names": ["not_malignant", "malignant"],
        "positive_class": "malignant",
        "threshold": 0.5,
        "training_data": {"description": "unit test", "n_images": 0},
        "metrics": {"cross_validated": {"auc": ci}},
        "smoke_test": True,
    }


def test_round_trip_and_tamper(tmp_path: Path) -> None:
    model = A.build_model("light", **A.default_kwargs("light", fast=True)).eval()
    folder = export_model_folder(model, tmp_path / "m", _manifest())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["weights_sha256"]) == 64 and manifest["created"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert "research use" in card.lower() or "licence" in card.lower()
    assert "not a diagnosis" in card and "Smoke-test" in card

    assert read_manifest(folder).to_dict() == manifest  # what export writes reads back

    loaded, m2 = load_model_folder(folder)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
    assert m2.threshold == 0.5

    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_model_folder(folder)


def test_missing_or_broken_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        load_model_folder(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError):
        load_model_folder(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelError, match="lacks"):
        load_model_folder(tmp_path)


def test_export_refuses_a_bad_manifest_before_writing(tmp_path: Path) -> None:
    model = A.build_model("light", **A.default_kwargs("light", fast=True)).eval()
    bad = {**_manifest(), "input": {"spacing_mm": -1.0, "size": [64, 64]}}
    with pytest.raises(ModelError, match=r"manifest to export is invalid: input\.spacing_mm"):
        export_model_folder(model, tmp_path / "m", bad)
    assert not (tmp_path / "m").exists()


def test_card_names_the_heads_and_their_own_fine_tuned_stages() -> None:
    manifest = {
        **_manifest(),
        "output": "score+lesion_map",
        "lesion_map": {"stride": 16, "channels": ["abnormal", "malignant"], "channel": 0},
        "breast_combiner": {"use_other": True},
        "training": {"backbone": "EfficientNet-Lite0", "tail_stages": 1, "heads": 2},
    }
    card = model_card(manifest)
    assert "frozen except its 1 deepest stage(s); 2 lesion heads" in card
    assert "each head with its own fine-tuned copy of those stages" in card
    assert "other breast" in card
    one_frozen = model_card({**manifest, "training": {"tail_stages": 0, "heads": 1}})
    assert "; frozen." in one_frozen and "lesion heads" not in one_frozen
