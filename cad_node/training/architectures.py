"""Model architectures: every model maps a (B, 1, H, W) image to (B, 1) logits."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets.densenet import DenseNet
from monai.networks.nets.resnet import ResNet, resnet50
from torch import nn

from cad_node.errors import ModelError

log = logging.getLogger(__name__)

#: Whole-image classifiers trained end to end on the image label (the seed architectures).
WHOLE_IMAGE_ARCHITECTURES = ("baseline", "light", "densenet121", "resnet50")
#: The pretrained EfficientNet-Lite0 family (see ``training.lesion``): a lesion head on its
#: features, and a linear model on its globally pooled features; each also with the other breast.
LITE0_ARCHITECTURES = ("lite0-lesion", "lite0-global")
ARCHITECTURES = (*WHOLE_IMAGE_ARCHITECTURES, *LITE0_ARCHITECTURES)
#: Also buildable, not in the default comparison: multiple-instance max over image tiles.
ALL_ARCHITECTURES = (*ARCHITECTURES, "patchmax")


def _pooled_head(channels: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * channels, 1))


class _AvgMaxPool(nn.Module):
    """Concatenated global average and max pooling (max keeps small lesions visible)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class BaselineCNN(nn.Module):
    """Plain conv-BN-ReLU-maxpool stack trained from scratch."""

    def __init__(
        self, widths: Sequence[int] = (16, 32, 64, 128, 128), dropout: float = 0.2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for w in widths:
            layers += [
                nn.Conv2d(cin, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = _AvgMaxPool()
        self.head = _pooled_head(cin, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.pool(self.features(x)))
        return out


class _SeparableBlock(nn.Module):
    """Residual block of two depthwise-separable 3x3 convolutions."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(stride) if stride != 1 else nn.Identity(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.body(x) + self.shortcut(x))
        return out


class LightResNet(nn.Module):
    """Light residual CNN of depthwise-separable blocks (about 1 M parameters by default)."""

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256, 384),
        depths: Sequence[int] = (1, 2, 2, 3, 2),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        cin = widths[0]
        for w, d in zip(widths, depths, strict=True):
            for i in range(d):
                blocks.append(_SeparableBlock(cin, w, stride=2 if i == 0 else 1))
                cin = w
        self.features = nn.Sequential(*blocks)
        self.pool = _AvgMaxPool()
        self.head = _pooled_head(cin, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.pool(self.features(self.stem(x))))
        return out


#: DenseNet feature modules unfrozen at each stage, deepest first.
_DENSE_STAGES = (
    ("denseblock4", "norm5", "transition3"),
    ("denseblock3", "transition2"),
    ("denseblock2", "transition1"),
    ("denseblock1", "conv0", "norm0"),
)


class DenseNetClassifier(nn.Module):
    """MONAI DenseNet (121 by default) with a dropout-0.2 linear head and stage freezing."""

    def __init__(
        self,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.net = DenseNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=tuple(block_config),
        )
        head = self.net.get_submodule("class_layers")
        old = head.get_submodule("out")
        assert isinstance(old, nn.Linear)
        head.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(old.in_features, 1))
        self.trainable_stages = len(_DENSE_STAGES)

    def set_trainable_stages(self, n: int) -> None:
        """Freeze the backbone except the ``n`` deepest dense stages (the head always trains)."""
        self.trainable_stages = max(0, min(n, len(_DENSE_STAGES)))
        for p in self.net.features.parameters():
            p.requires_grad = False
        for stage in _DENSE_STAGES[: self.trainable_stages]:
            for name in stage:
                for p in getattr(self.net.features, name).parameters():
                    p.requires_grad = True
        self.train(self.training)

    def train(self, mode: bool = True) -> DenseNetClassifier:
        """Like ``nn.Module.train`` but frozen stages keep their batch-norm statistics."""
        super().train(mode)
        if mode:
            for stage in _DENSE_STAGES[self.trainable_stages :]:
                for name in stage:
                    getattr(self.net.features, name).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def load_pretrained(self, path: Path) -> int:
        """Load backbone weights (safetensors or a torch state dict); the head stays new.

        Returns the number of tensors loaded.

        Takes MONAI's key layout or torchvision's ImageNet DenseNet121 state dict (see
        :func:`torchvision_densenet_keys`); an RGB first convolution becomes grey by summing its
        filters over the colour channels.
        """
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ModelError(f"{path}: not a state dict")
        state = torchvision_densenet_keys({k.removeprefix("net."): v for k, v in state.items()})
        own = self.net.state_dict()
        conv0 = state.get("features.conv0.weight")
        grey = own["features.conv0.weight"].shape[1] == 1
        if conv0 is not None and conv0.ndim == 4 and conv0.shape[1] == 3 and grey:
            state["features.conv0.weight"] = conv0.sum(dim=1, keepdim=True)
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        usable = {k: v for k, v in usable.items() if not k.startswith("class_layers")}
        if not usable:
            raise ModelError(f"{path}: no weights match the DenseNet backbone")
        self.net.load_state_dict(usable, strict=False)
        log.info("densenet121: loaded %d/%d backbone tensors from %s", len(usable), len(own), path)
        return len(usable)


_TV_LAYER = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.(norm|conv)\.?([12])\.")


def torchvision_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision DenseNet keys to MONAI's; MONAI keys pass unchanged.

    torchvision names a dense layer's parts ``denselayerN.norm1`` (older files ``norm.1``);
    MONAI nests them as ``denselayerN.layers.norm1``. Its classifier (``classifier.*``) is
    dropped: the head is always new.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        out[_TV_LAYER.sub(r"\1.layers.\2\3.", key)] = value
    return out


def dense_stage_schedule(epoch: int, epochs: int) -> int:
    """Trainable dense stages at an epoch: head only first, then one more stage per step."""
    steps = len(_DENSE_STAGES) + 1
    return min(len(_DENSE_STAGES), epoch * steps // max(epochs, 1))


class PatchMaxClassifier(nn.Module):
    """Scores every tile of the image with a patch classifier; the image logit is the maximum.

    Tiles that are nearly all background (mean below ``min_mean``) are ignored. The patch
    classifier (``base``) can be trained on lesion vs background patches alone, and the whole
    model fine-tuned on image labels (multiple-instance learning with max pooling).
    """

    def __init__(
        self,
        base: str = "light",
        base_kwargs: dict[str, Any] | None = None,
        patch: int = 64,
        stride: int = 32,
        min_mean: float = 0.05,
    ) -> None:
        super().__init__()
        if base == "patchmax":
            raise ModelError("patchmax cannot wrap itself")
        self.base = build_model(base, **(base_kwargs or {}))
        self.patch = patch
        self.stride = stride
        self.min_mean = min_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if x.shape[-1] <= self.patch and x.shape[-2] <= self.patch:
            out: torch.Tensor = self.base(x)
            return out
        tiles = x.unfold(2, self.patch, self.stride).unfold(3, self.patch, self.stride)
        n = tiles.shape[2] * tiles.shape[3]
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(b * n, x.shape[1], self.patch, self.patch)
        logits: torch.Tensor = self.base(tiles).reshape(b, n)
        breast = tiles.mean(dim=(1, 2, 3)).reshape(b, n) >= self.min_mean
        breast[:, 0] |= ~breast.any(dim=1)  # an all-background image still gets a score
        return logits.masked_fill(~breast, -1e4).amax(dim=1, keepdim=True)


def build_model(architecture: str, **kwargs: Any) -> nn.Module:
    """Construct an architecture by name from its constructor kwargs (as kept in manifests)."""
    if architecture == "baseline":
        return BaselineCNN(**kwargs)
    if architecture == "light":
        return LightResNet(**kwargs)
    if architecture == "densenet121":
        return DenseNetClassifier(**kwargs)
    if architecture == "resnet50":
        options = {"spatial_dims": 2, "n_input_channels": 1, "num_classes": 1, **kwargs}
        if "layers" in options:
            return ResNet(block="bottleneck", **options)
        return resnet50(**options)
    if architecture == "patchmax":
        return PatchMaxClassifier(**kwargs)
    if architecture == "lite0-lesion":
        from cad_node.training.lesion_net import LiteLesionNet

        return LiteLesionNet(**kwargs)
    raise ModelError(f"unknown architecture {architecture!r}; expected one of {ALL_ARCHITECTURES}")


def default_kwargs(architecture: str, fast: bool = False) -> dict[str, Any]:
    """Constructor kwargs: full size, or tiny variants for ``--fast`` smoke runs."""
    if architecture == "baseline":
        return {"widths": [8, 16, 32, 32]} if fast else {}
    if architecture == "light":
        return {"widths": [8, 16, 32], "depths": [1, 1, 1]} if fast else {}
    if architecture == "densenet121":
        if fast:
            return {"init_features": 8, "growth_rate": 4, "block_config": [1, 1, 1, 1]}
        return {}
    if architecture == "resnet50":
        if fast:
            return {"layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 16, 32], "conv1_t_stride": 2}
        return {"conv1_t_stride": 2}
    if architecture == "patchmax":
        if fast:
            return {"base_kwargs": default_kwargs("light", fast=True), "patch": 32, "stride": 16}
        return {"base": "light", "base_kwargs": {}, "patch": 64, "stride": 32}
    if architecture in LITE0_ARCHITECTURES:
        return {}
    raise ModelError(f"unknown architecture {architecture!r}; expected one of {ALL_ARCHITECTURES}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
