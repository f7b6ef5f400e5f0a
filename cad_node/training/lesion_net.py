"""Lesion-level model: EfficientNet-Lite0 features and a fully convolutional lesion head.

The head turns the stride-16 and stride-32 feature maps (and optionally the stride-8 ones, for
calcification-scale detail) into two lesion-logit maps at stride 16 (channel 0: any
abnormality, channel 1: malignant). An image's logit is the mean of the top
``top_k_fraction`` of its map cells inside the breast (a smooth maximum, so one small lesion
can carry the image). Detections are the local maxima of the map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cad_node.training.efficientnet_lite import (
    BN_EPS,
    BN_MOMENTUM,
    HEAD_CHANNELS,
    LITE0_STAGES,
    STRIDE8_BLOCK,
    STRIDE16_BLOCK,
    EfficientNetLite0,
    MBConv,
    SameConv2d,
    grey_stem_weight,
    load_imagenet_lite0,
)

STRIDE = 16
CHANNELS = ("abnormal", "malignant")
STRIDE8_CHANNELS = LITE0_STAGES[2][4]
STRIDE16_CHANNELS = LITE0_STAGES[4][4]
#: First block of stage 7 (320 channels, the deepest stage).
STAGE7_BLOCK = sum(stage[0] for stage in LITE0_STAGES[:-1])
STAGE7_INPUT_CHANNELS = LITE0_STAGES[5][4]
#: Tail blocks unfrozen at each stage of fine-tuning, deepest first (stage 7, stage 6).
TAIL_STAGES = ((STAGE7_BLOCK, STAGE7_BLOCK + 1), (STRIDE16_BLOCK + 1, STAGE7_BLOCK))


def breast_cells(x: torch.Tensor, level: float = 0.05) -> torch.Tensor:
    """(B, 1, H, W) image in [0, 1] -> (B, h, w) mask of stride-16 cells inside the breast."""
    mean = F.avg_pool2d(x, STRIDE, STRIDE, ceil_mode=True)
    return mean[:, 0] > level


def top_k_pool(maps: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, C, h, w) logits and (B, h, w) mask -> (B, C): mean of the top cells in the mask."""
    out = []
    for b in range(maps.shape[0]):
        cells = maps[b][:, mask[b]] if bool(mask[b].any()) else maps[b].flatten(1)
        k = max(1, round(fraction * cells.shape[1]))
        out.append(cells.topk(k, dim=1).values.mean(dim=1))
    return torch.stack(out)


def merge_mirrored(maps: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Mean of a film's maps and those of its top-bottom mirror, mirrored back (test-time
    augmentation; cells align exactly when the film's height is a multiple of the stride)."""
    return 0.5 * (maps + mirrored.flip(-2))


def fine_to_stride16(s8: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Stride-8 maps -> stride 16 by a 2x2 max (a calcification keeps its strongest cell)."""
    pooled = F.max_pool2d(s8, 2, 2, ceil_mode=True)
    return pooled[:, :, : shape[0], : shape[1]]


class LesionHead(nn.Module):
    """Stride-16 and stride-32 features -> two lesion-logit maps at stride 16.

    ``kind="conv"`` mixes the reduced features with a 3x3 convolution; ``"linear"`` is a
    per-cell linear model of the same features (no hidden layer). With ``fine`` the stride-8
    features join the mix too, reduced and max-pooled to stride 16 (conv head only).
    """

    def __init__(
        self, width: int = 32, dropout: float = 0.2, kind: str = "conv", fine: bool = False
    ) -> None:
        super().__init__()
        if kind not in ("conv", "linear"):
            raise ValueError(f"unknown lesion head {kind!r}")
        if fine and kind != "conv":
            raise ValueError("stride-8 features need the conv lesion head")
        self.kind = kind
        self.fine = fine
        out_width = len(CHANNELS) if kind == "linear" else width
        self.reduce16 = nn.Conv2d(STRIDE16_CHANNELS, out_width, 1)
        self.reduce32 = nn.Conv2d(HEAD_CHANNELS, out_width, 1)
        self.reduce8 = nn.Conv2d(STRIDE8_CHANNELS, width, 1) if fine else None
        self.drop = nn.Dropout2d(dropout)
        parts = 3 if fine else 2
        self.mix = (
            nn.Conv2d(parts * width, width, 3, padding=1) if kind == "conv" else nn.Identity()
        )
        self.out = nn.Conv2d(width, len(CHANNELS), 1) if kind == "conv" else nn.Identity()
        bias = self.reduce16.bias if kind == "linear" else self.out.bias
        assert isinstance(bias, torch.Tensor)
        nn.init.constant_(bias, -4.0)  # lesions are rare: start near p = 0.02

    def forward(
        self, s16: torch.Tensor, s32: torch.Tensor, s8: torch.Tensor | None = None
    ) -> torch.Tensor:
        low = self.reduce32(self.drop(s32))
        low = F.interpolate(low, size=s16.shape[2:], mode="bilinear", align_corners=False)
        if self.kind == "linear":
            linear: torch.Tensor = self.reduce16(self.drop(s16)) + low
            return linear
        parts = [self.reduce16(self.drop(s16)), low]
        if self.reduce8 is not None:
            if s8 is None:
                raise ValueError("this lesion head needs the stride-8 features")
            parts.append(fine_to_stride16(self.reduce8(self.drop(s8)), s16.shape[2:]))
        h = self.mix(F.relu(torch.cat(parts, dim=1)))
        out: torch.Tensor = self.out(F.relu(h))
        return out


class HeadEnsemble(nn.Module):
    """Lesion heads trained apart (other seeds); their logit maps are averaged. ``s32`` is
    one map for all heads, or one per head (heads with their own stage 7)."""

    def __init__(self, heads: list[LesionHead]) -> None:
        super().__init__()
        self.members = nn.ModuleList(heads)

    def forward(
        self,
        s16: torch.Tensor,
        s32: torch.Tensor | list[torch.Tensor],
        s8: torch.Tensor | None = None,
    ) -> torch.Tensor:
        each = s32 if isinstance(s32, list) else [s32] * len(self.members)
        maps = [member(s16, x, s8) for member, x in zip(self.members, each, strict=True)]
        return torch.stack(maps).mean(dim=0)


class OwnTail(nn.Module):
    """A head's own stage 7 and 1280-channel convolution, fed by the shared stage 6 (the
    second and later heads of an ensemble whose stage 7 was fine-tuned with each head)."""

    def __init__(self) -> None:
        super().__init__()
        _, kernel, stride, expansion, cout = LITE0_STAGES[-1]
        self.block = MBConv(STAGE7_INPUT_CHANNELS, cout, kernel, stride, expansion)
        self.conv = SameConv2d(cout, HEAD_CHANNELS, 1, bias=False)
        self.bn = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS, momentum=BN_MOMENTUM)

    @classmethod
    def of(cls, backbone: EfficientNetLite0) -> OwnTail:
        """A copy of ``backbone``'s stage 7 and head convolution."""
        tail = cls()
        tail.block.load_state_dict(backbone._blocks[STAGE7_BLOCK].state_dict())
        tail.conv.load_state_dict(backbone._conv_head.state_dict())
        tail.bn.load_state_dict(backbone._bn1.state_dict())
        return tail

    def forward(self, s7in: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = F.relu6(self.bn(self.conv(self.block(s7in))))
        return out


class LiteLesionNet(nn.Module):
    """Grey mammogram in [0, 1] -> image logit of ``channel``; lesion maps on request.

    ``pretrained`` loads the ImageNet weights of the installed EfficientNet-Lite0 package (for
    training); a model folder's weights replace them all. With ``mirror_tta`` the maps are the
    mean over the film and its top-bottom mirror (:func:`merge_mirrored`); with ``heads`` > 1
    the head is a :class:`HeadEnsemble`, and with ``own_tails`` each head after the first has
    its own stage 7 (:class:`OwnTail`); with ``fine`` the head also reads the stride-8 features.
    """

    def __init__(
        self,
        channel: int = 1,
        head_width: int = 32,
        top_k_fraction: float = 0.01,
        dropout: float = 0.2,
        head: str = "conv",
        pretrained: bool = False,
        mirror_tta: bool = False,
        heads: int = 1,
        fine: bool = False,
        own_tails: bool = False,
    ) -> None:
        super().__init__()
        self.channel = channel
        self.fine = fine
        self.mirror_tta = mirror_tta
        self.top_k_fraction = top_k_fraction
        self.backbone = EfficientNetLite0(num_classes=0, in_channels=1)
        if pretrained:
            rgb = load_imagenet_lite0()
            state = {k: v for k, v in rgb.state_dict().items() if not k.startswith("_fc")}
            state["_conv_stem.weight"] = grey_stem_weight(state["_conv_stem.weight"])
            self.backbone.load_state_dict(state, strict=True)
        self.head: LesionHead | HeadEnsemble = (
            LesionHead(head_width, dropout, head, fine)
            if heads == 1
            else HeadEnsemble([LesionHead(head_width, dropout, head, fine) for _ in range(heads)])
        )
        self.own_tails = nn.ModuleList([OwnTail() for _ in range(heads - 1)] if own_tails else [])
        self.trainable_tail = 0
        self.bn_train = False

    # --- pieces used by training on cached features -------------------------------------
    def encode_s16(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen part: image -> stride-16 features (112 channels)."""
        return self.encode(x)[1]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen part: image -> stride-8 (40 channels) and stride-16 (112) features."""
        b = self.backbone
        s8 = b.run_blocks(b.stem(2.0 * x - 1.0), 0, STRIDE8_BLOCK + 1)
        return s8, b.run_blocks(s8, STRIDE8_BLOCK + 1, STRIDE16_BLOCK + 1)

    def stage7_input(self, s16: torch.Tensor) -> torch.Tensor:
        """Stride-16 features -> the output of stage 6 (192 channels at stride 32)."""
        return self.backbone.run_blocks(s16, STRIDE16_BLOCK + 1, STAGE7_BLOCK)

    def tail_from_stage7(self, s7in: torch.Tensor) -> torch.Tensor:
        """Stage 6's output -> stage 7 and the 1280-channel head (the part the first stage of
        unfreezing trains, so that it can train from cached :meth:`stage7_input` maps)."""
        b = self.backbone
        return b.head(b.run_blocks(s7in, STAGE7_BLOCK, len(b._blocks)))

    def run_head(
        self, s16: torch.Tensor, s7in: torch.Tensor | None, s8: torch.Tensor | None
    ) -> torch.Tensor:
        """Lesion maps from the stride-16 features and stage 6's output (computed from
        ``s16`` when None), every head on its own stage 7 where it has one."""
        if s7in is None:
            s7in = self.stage7_input(s16)
        s32 = self.tail_from_stage7(s7in)
        if not len(self.own_tails):
            maps: torch.Tensor = self.head(s16, s32, s8)
            return maps
        assert isinstance(self.head, HeadEnsemble)
        each: torch.Tensor = self.head(s16, [s32, *(tail(s7in) for tail in self.own_tails)], s8)
        return each

    def pool(self, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Image logits (B, C) from maps and breast masks."""
        return top_k_pool(maps, mask, self.top_k_fraction)

    def set_trainable_tail(self, n: int) -> None:
        """Unfreeze the ``n`` deepest tail stages (0: head only); frozen BN keeps its stats."""
        self.trainable_tail = max(0, min(n, len(TAIL_STAGES)))
        self.backbone.requires_grad_(False)
        if self.trainable_tail >= 1:
            self.backbone._conv_head.requires_grad_(True)
            self.backbone._bn1.requires_grad_(True)
        for start, stop in TAIL_STAGES[: self.trainable_tail]:
            for block in self.backbone._blocks[start:stop]:
                block.requires_grad_(True)

    def train(self, mode: bool = True) -> LiteLesionNet:
        """Like ``nn.Module.train``, but frozen backbone parts keep their batch-norm statistics
        (unfrozen tail stages update theirs only with ``bn_train``)."""
        super().train(mode)
        if mode:
            self.backbone.eval()
            self.own_tails.eval()
            if self.bn_train:
                for start, stop in TAIL_STAGES[: self.trainable_tail]:
                    for block in self.backbone._blocks[start:stop]:
                        block.train()
        return self

    # --- the whole model --------------------------------------------------------------
    def lesion_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, h, w) lesion logits and the (B, h, w) breast mask of a (B, 1, H, W) batch."""
        maps = self._maps(x)
        if self.mirror_tta:
            maps = merge_mirrored(maps, self._maps(x.flip(-2)))
        return maps, breast_cells(x)

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        s8, s16 = self.encode(x)
        return self.run_head(s16, None, s8 if self.fine else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps, mask = self.lesion_maps(x)
        return self.pool(maps, mask)[:, self.channel : self.channel + 1]
