"""Small model folders made by tests: real format, tiny untrained weights, never a real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cad_node.training import architectures
from cad_node.training.export import export_model_folder


def tiny_model_folder(folder: Path, *, threshold: float = 0.5, size: int = 64) -> Path:
    """Export a tiny LightResNet with fixed random weights (seeded) as a model folder."""
    torch.manual_seed(0)
    kwargs = architectures.default_kwargs("light", fast=True)
    module = architectures.build_model("light", **kwargs).eval()
    manifest: dict[str, Any] = {
        "name": "test-light",
        "version": "0.0.1",
        "architecture": "light",
        "architecture_kwargs": kwargs,
        "input": {"spacing_mm": 0.8, "size": [size, size]},
        "class_names": ["not_malignant", "malignant"],
        "positive_class": "malignant",
        "threshold": threshold,
        "training_data": {"description": "weights made in a unit test; not a model"},
        "metrics": {},
        "smoke_test": True,
    }
    return export_model_folder(module, folder, manifest)
