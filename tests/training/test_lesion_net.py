"""The lesion model's pieces: breast cells, top-k pooling, the heads, staged unfreezing."""

from __future__ import annotations

import pytest
import torch

from cad_node.training.lesion_net import (
    LesionHead,
    LiteLesionNet,
    breast_cells,
    top_k_pool,
)


def test_breast_cells_follow_the_image() -> None:
    x = torch.zeros(1, 1, 64, 64)
    x[..., :, :32] = 0.5  # breast on the left half
    mask = breast_cells(x)[0]
    assert mask.shape == (4, 4)
    assert mask[:, :2].all() and not mask[:, 2:].any()


def test_top_k_pool_averages_the_best_cells_inside_the_mask() -> None:
    maps = torch.zeros(1, 1, 2, 5)
    maps[0, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    mask = torch.zeros(1, 2, 5, dtype=torch.bool)
    mask[0, :, :4] = True  # the 100 lies outside the breast
    assert float(top_k_pool(maps, mask, 0.25)[0, 0]) == 3.5  # top 2 of 8 cells: 4 and 3


def test_lesion_net_gives_one_logit_and_two_maps() -> None:
    net = LiteLesionNet().eval()
    x = torch.rand(2, 1, 128, 96)
    with torch.no_grad():
        logits = net(x)
        maps, mask = net.lesion_maps(x)
    assert logits.shape == (2, 1)
    assert maps.shape == (2, 2, 8, 6) and mask.shape == (2, 8, 6)


def test_a_fine_head_reads_stride8_features_on_any_film_size() -> None:
    net = LiteLesionNet(fine=True).eval()
    x = torch.rand(1, 1, 136, 100)  # stride 16: 9 x 7 cells; stride 8: 17 x 13
    with torch.no_grad():
        maps, mask = net.lesion_maps(x)
        s8, s16 = net.encode(x)
    assert s8.shape == (1, 40, 17, 13) and s16.shape == (1, 112, 9, 7)
    assert maps.shape == (1, 2, 9, 7) and mask.shape == (1, 9, 7)
    with pytest.raises(ValueError, match="stride-8"):
        net.head(s16, net.tail_from_stage7(net.stage7_input(s16)))
    with pytest.raises(ValueError, match="conv"):
        LesionHead(kind="linear", fine=True)


def test_staged_unfreezing_opens_the_deepest_stages_only() -> None:
    net = LiteLesionNet()
    net.set_trainable_tail(0)
    assert not any(p.requires_grad for p in net.backbone.parameters())
    net.set_trainable_tail(1)
    assert net.backbone._blocks[15]._project_conv.weight.requires_grad
    assert not net.backbone._blocks[14]._project_conv.weight.requires_grad
    net.set_trainable_tail(2)
    assert net.backbone._blocks[11]._expand_conv.weight.requires_grad
    assert not net.backbone._blocks[10]._expand_conv.weight.requires_grad
    net.train()
    assert not net.backbone._blocks[15]._bn1.training  # frozen statistics by default
    net.bn_train = True
    net.train()
    assert net.backbone._blocks[15]._bn1.training and not net.backbone._blocks[10]._bn1.training
