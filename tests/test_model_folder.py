"""Model folders: manifests validated as one typed value, and how a model's validation is
reported."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from cad_node.errors import ModelError
from cad_node.model_folder import (
    MODELS_DIR,
    Manifest,
    ModelInfo,
    OutputKind,
    default_model_path,
    model_info,
    read_manifest,
    validation_warning,
)
from tests.model_factory import in_memory_manifest


def manifest_with_auc(value: float, low: float, high: float) -> Manifest:
    return in_memory_manifest(
        name="m",
        version="1",
        threshold=0.5,
        input={"spacing_mm": 0.4, "size": [64, 64]},
        smoke_test=False,
        metrics={"cross_validated": {"auc": {"value": value, "ci95": [low, high]}}},
    )


def test_a_model_whose_interval_is_above_chance_is_validated() -> None:
    assert validation_warning(manifest_with_auc(0.85, 0.78, 0.91)) is None


def test_a_model_whose_interval_includes_chance_is_flagged() -> None:
    warning = validation_warning(manifest_with_auc(0.55, 0.45, 0.65))
    assert warning is not None
    assert "0.55 (95% CI 0.45-0.65)" in warning
    assert "not shown to be better than chance" in warning


def test_unmeasured_and_smoke_test_models_are_flagged() -> None:
    unmeasured = Manifest.from_dict({**manifest_with_auc(0.5, 0.4, 0.6).to_dict(), "metrics": {}})
    assert "unmeasured" in str(validation_warning(unmeasured))
    smoke = Manifest.from_dict({**manifest_with_auc(0.9, 0.8, 0.95).to_dict(), "smoke_test": True})
    assert "smoke-test" in str(validation_warning(smoke))


def test_an_unreadable_manifest_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no manifest\.json"):
        read_manifest(tmp_path)


def test_the_shipped_manifest_reads_as_it_is_written() -> None:
    folder = default_model_path()
    manifest = read_manifest(folder)
    assert folder.parent == MODELS_DIR
    assert manifest.output is OutputKind.SCORE_AND_LESION_MAP and manifest.localises
    assert manifest.lesion.stride == 16 and manifest.input.size == (1024, 768)
    assert manifest.combiner is not None
    assert manifest.to_dict() == json.loads((folder / "manifest.json").read_text())


def _shipped() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((default_model_path() / "manifest.json").read_text())
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": 1.5}, r"threshold: Input should be less than or equal to 1 \(got 1\.5\)"),
        ({"output": "heatmap"}, r"output: Input should be 'score' or 'score\+lesion_map'"),
        ({"input": {"spacing_mm": 0.2, "size": [1024]}}, r"input\.size"),
        ({"weights_sha256": "abc"}, r"weights_sha256: String should match pattern"),
        ({"name": "x" * 65}, r"name: String should have at most 64 characters"),
        ({"positive_class": "benign"}, r"positive_class 'benign' is not one of"),
        ({"format_version": 2}, r"format 2 is newer than this node reads \(1\)"),
        ({"lesion_map": None}, r"output score\+lesion_map needs a lesion_map entry"),
        ({"breast_combiner": {"own": 1.0}}, r"invalid breast_combiner"),
    ],
)
def test_a_bad_field_is_refused_by_name(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({**_shipped(), **change}))
    with pytest.raises(ModelError, match=message) as refused:
        read_manifest(tmp_path)
    assert str(tmp_path) in str(refused.value)


def test_missing_fields_are_listed(tmp_path: Path) -> None:
    data = _shipped()
    del data["threshold"], data["input"]["spacing_mm"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"lacks \['input\.spacing_mm', 'threshold'\]"):
        read_manifest(tmp_path)


def test_a_manifest_is_frozen() -> None:
    manifest = read_manifest(default_model_path())
    with pytest.raises(ValueError, match="frozen"):
        manifest.threshold = 0.1  # type: ignore[misc]


def test_older_classifier_manifests_name_their_output_kind() -> None:
    legacy = {**manifest_with_auc(0.8, 0.7, 0.9).to_dict()}
    legacy["output"] = "sigmoid probability of the positive class"
    assert Manifest.from_dict(legacy).output is OutputKind.SCORE


def test_model_info_of_the_shipped_model() -> None:
    manifest = read_manifest(default_model_path())
    info = model_info()
    assert info == ModelInfo.of(manifest)
    assert (info.name, info.version) == ("mias-lite0-lesion", "0.3.0")
    assert info.sha256 == manifest.weights_sha256 and len(info.sha256) == 64
    assert info.threshold == manifest.threshold
    assert info.localises and info.detection_threshold == manifest.lesion.detection_threshold
    assert info.validated is (validation_warning(manifest) is None)
    assert info.warning == validation_warning(manifest)
    assert info.job_record() == {"name": info.name, "version": info.version, "sha256": info.sha256}
    assert list(info.summary()) == ["name", "version", "threshold", "not_validated"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.threshold = 0.1  # type: ignore[misc]


def test_model_info_of_an_unvalidated_score_model_says_why() -> None:
    info = ModelInfo.of(manifest_with_auc(0.55, 0.45, 0.65))
    assert not info.validated and "not shown to be better than chance" in str(info.warning)
    assert not info.localises and info.detection_threshold is None
    assert info.summary()["not_validated"] == info.warning


def test_model_info_keeps_to_dicom_long_strings() -> None:
    with pytest.raises(ModelError, match=r"model name 'x{20}'\.\.\. exceeds 64"):
        ModelInfo(name="x" * 65, version="1", sha256="0" * 64, threshold=0.5)
