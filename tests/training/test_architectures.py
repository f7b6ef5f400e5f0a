"""Architectures: DenseNet121 takes torchvision's ImageNet key layout through --pretrained."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cad_node.training.architectures import DenseNetClassifier, torchvision_densenet_keys


def _as_torchvision(monai_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MONAI DenseNet121 keys written the way torchvision's densenet121 names them."""
    out = {}
    for key, value in monai_state.items():
        if key.startswith("class_layers"):
            continue
        out[re.sub(r"\.layers\.", ".", key)] = value
    out["features.conv0.weight"] = out["features.conv0.weight"].repeat(1, 3, 1, 1) / 3.0
    out["classifier.weight"] = torch.zeros(1000, 1024)
    out["classifier.bias"] = torch.zeros(1000)
    return out


def test_torchvision_state_dict_loads_every_backbone_tensor(tmp_path: Path) -> None:
    source = DenseNetClassifier()
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_(-1, 1)
    state = _as_torchvision(source.net.state_dict())
    assert "features.denseblock1.denselayer1.norm1.weight" in state  # torchvision's layout
    path = tmp_path / "densenet121-imagenet.pth"
    torch.save(state, path)
    target = DenseNetClassifier()
    loaded = target.load_pretrained(path)
    backbone = [k for k in target.net.state_dict() if not k.startswith("class_layers")]
    assert loaded == len(backbone)
    for key in backbone:
        assert torch.allclose(target.net.state_dict()[key], source.net.state_dict()[key], atol=1e-6)


def test_old_torchvision_names_are_renamed_too() -> None:
    old = {"features.denseblock2.denselayer3.norm.1.weight": torch.zeros(1)}
    assert list(torchvision_densenet_keys(old)) == [
        "features.denseblock2.denselayer3.layers.norm1.weight"
    ]
