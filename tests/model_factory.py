"""Small model folders made by tests: real format, tiny untrained weights, never a real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cad_node.inference.model import CadModel, find_cam_layer
from cad_node.model_folder import Manifest
from cad_node.training import architectures
from cad_node.training.export import export_model_folder

SIZE = (64, 64)


def in_memory_manifest(**fields: Any) -> Manifest:
    """The manifest of a model built in a test rather than read from a folder: ``fields``
    over placeholders for what only a folder has (weights' sha256, training data)."""
    return Manifest.model_validate(
        {
            "architecture": "test-only",
            "architecture_kwargs": {},
            "class_names": ["not_malignant", "malignant"],
            "positive_class": "malignant",
            "training_data": {"description": "none: a model built in a test"},
            "metrics": {},
            "smoke_test": True,
            "weights_sha256": "0" * 64,
            "created": "-",
            **fields,
        }
    )


class BrightSpotNet(nn.Module):
    """Fixed weights: the mean positive response to bright structure is the score."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(4, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
            self.conv.bias.fill_(-0.6)  # respond only to clearly bright pixels
            self.out.weight.fill_(1.0)
            self.out.bias.fill_(-0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.act(self.conv(x))).flatten(1))


def bright_spot_model(threshold: float = 0.5) -> CadModel:
    """A CadModel around BrightSpotNet: bright structure drives score and heatmap."""
    manifest = in_memory_manifest(
        name="bright-spot",
        version="test",
        threshold=threshold,
        input={"spacing_mm": 0.8, "size": list(SIZE)},
    )
    model = CadModel(BrightSpotNet().eval(), manifest, torch.device("cpu"), Path("."))
    model.cam_layer = find_cam_layer(model.module, SIZE)
    return model


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


class BrightSpotLesionNet(nn.Module):
    """Fixed weights with the lesion-model interface: the map is the share of clearly bright
    pixels in each 16x16 cell (as a logit), the image logit its maximum."""

    def lesion_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bright = torch.nn.functional.avg_pool2d((x > 0.9).float(), 16, ceil_mode=True)
        maps = torch.cat([bright, bright], dim=1) * 60.0 - 4.0
        mask = torch.nn.functional.avg_pool2d(x, 16, ceil_mode=True)[:, 0] > 0.05
        return maps, mask

    def pool(self, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return maps.masked_fill(~mask[:, None], -1e4).flatten(2).amax(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps, mask = self.lesion_maps(x)
        return self.pool(maps, mask)[:, 1:2]


LESION_COMBINER = {
    "own": 1.0, "other": -0.5, "bias": 0.0, "single_own": 1.0, "single_bias": 0.0,
    "use_other": True,
}  # fmt: skip


def bright_spot_lesion_model(
    threshold: float = 0.5, size: tuple[int, int] = (256, 192)
) -> CadModel:
    """A CadModel around BrightSpotLesionNet, with a lesion map and a breast combiner."""
    manifest = in_memory_manifest(
        name="bright-spot-lesion",
        version="test",
        threshold=threshold,
        input={"spacing_mm": 0.4, "size": list(size)},
        output="score+lesion_map",
        lesion_map={"stride": 16, "channels": ["abnormal", "malignant"], "channel": 1},
        breast_combiner=LESION_COMBINER,
    )
    return CadModel(BrightSpotLesionNet().eval(), manifest, torch.device("cpu"), Path("."))
