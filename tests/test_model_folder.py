"""Model folders: manifests, and how a model's validation is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cad_node.errors import ModelError
from cad_node.model_folder import read_manifest, validation_warning


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
