"""EfficientNet-Lite0: the installed ImageNet weights load strictly and classify real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from cad_node.training.efficientnet_lite import (
    STRIDE16_BLOCK,
    SameConv2d,
    imagenet_input,
    load_imagenet_lite0,
    pretrained_weights_path,
)
from cad_node.training.lesion_net import LiteLesionNet

ESPRESSO = 967  # ImageNet-1k class index
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return load_imagenet_lite0()


def _top1(model: torch.nn.Module, rgb: np.ndarray) -> tuple[int, float]:
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    x = F.interpolate(x.float(), size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        p = model(imagenet_input(x)).softmax(dim=1)[0]
    return int(p.argmax()), float(p.max())


def test_weights_come_from_the_installed_package() -> None:
    path = pretrained_weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth" and "site-packages" in str(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 296


def test_coffee_is_espresso(lite0: torch.nn.Module) -> None:
    label, p = _top1(lite0, data.coffee())
    assert label == ESPRESSO and p > 0.5


def test_chelsea_is_a_cat(lite0: torch.nn.Module) -> None:
    label, _ = _top1(lite0, data.chelsea())
    assert label in CATS


def test_same_padding_gives_ceil_of_size_over_stride() -> None:
    conv = SameConv2d(1, 1, 5, stride=2, bias=False)
    for size in (15, 16, 17):
        assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // 2)


def test_grey_stem_equals_the_grey_image_on_three_channels(lite0: torch.nn.Module) -> None:
    grey = torch.rand(1, 1, 64, 64)
    net = LiteLesionNet(pretrained=True).eval()
    rgb = (2.0 * grey - 1.0).expand(1, 3, 64, 64)
    with torch.no_grad():
        expected = lite0.run_blocks(lite0.stem(rgb), 0, STRIDE16_BLOCK + 1)
        got = net.encode_s16(grey)
    assert torch.allclose(got, expected, atol=1e-4)
