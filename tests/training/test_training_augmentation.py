"""Augmentation happens only inside training folds; models and staged unfreezing."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cad_node.training import architectures as A
from cad_node.training import train as T


class SpyTransform:
    """Records which dataset rows were transformed."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.images = np.zeros((0,))

    def __call__(self, image: Any) -> Any:
        match = [i for i, im in enumerate(self.images) if np.array_equal(im, image)]
        self.seen.extend(match)
        return np.asarray(image) + 1.0


def _data(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.random((n, 1, 16, 16)).astype(np.float32)
    y = np.array([i % 2 for i in range(n)], dtype=np.int64)
    return images, y


def test_validation_loader_is_never_augmented() -> None:
    images, y = _data()
    spy = SpyTransform()
    spy.images = images
    train_idx, val_idx = np.arange(0, 8), np.arange(8, 12)
    train, val = T.make_loaders(images, y, train_idx, val_idx, batch_size=4, seed=0, augment=spy)
    for x, _, idx in val:
        assert torch.equal(x, torch.from_numpy(images[idx.numpy()]))
    assert spy.seen == []
    seen_train = [int(i) for _, _, idx in train for i in idx]
    assert sorted(spy.seen) == sorted(seen_train)
    assert set(spy.seen) <= set(train_idx.tolist())


def test_fit_augments_only_training_rows() -> None:
    images, y = _data()
    spy = SpyTransform()
    spy.images = images
    cfg = T.fast_config(architectures=("baseline",), image_size=16, progress=False)
    model, val_loader, _ = T.fit(
        "baseline",
        A.default_kwargs("baseline", fast=True),
        images,
        y,
        np.arange(6),
        np.arange(6, 12),
        cfg,
        seed=0,
        augment=spy,
    )
    assert spy.seen and set(spy.seen) <= set(range(6))
    scores, idx = T.predict(model, val_loader)
    assert sorted(idx.tolist()) == list(range(6, 12)) and scores.shape == (6,)
    assert spy.seen and set(spy.seen) <= set(range(6))


def test_monai_augmentation_shape_range_and_seed() -> None:
    image = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    a = T.make_augmentation(3)
    b = T.make_augmentation(3)
    out_a = [a(image) for _ in range(5)]
    out_b = [b(image) for _ in range(5)]
    for x, z in zip(out_a, out_b, strict=True):
        assert isinstance(x, torch.Tensor) and x.shape == (1, 32, 32)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert torch.equal(x, z)


def test_architectures_forward_and_light_size() -> None:
    x = torch.rand(2, 1, 64, 64)
    for name in (*A.WHOLE_IMAGE_ARCHITECTURES, "lite0-lesion"):  # lite0-global: no network
        model = A.build_model(name, **A.default_kwargs(name, fast=True))
        assert model(x).shape == (2, 1)
    params = A.count_parameters(A.build_model("light"))
    assert 0.8e6 < params < 1.3e6


def test_densenet_staged_unfreezing() -> None:
    model = A.DenseNetClassifier(**A.default_kwargs("densenet121", fast=True))
    head = [p for n, p in model.named_parameters() if "class_layers" in n]
    block1 = list(model.net.features.denseblock1.parameters())
    block4 = list(model.net.features.denseblock4.parameters())
    model.set_trainable_stages(0)
    assert all(p.requires_grad for p in head)
    assert not any(p.requires_grad for p in block1 + block4)
    model.set_trainable_stages(1)
    assert all(p.requires_grad for p in block4) and not any(p.requires_grad for p in block1)
    model.train()
    assert not model.net.features.denseblock1.training and model.net.features.denseblock4.training
    stages = [A.dense_stage_schedule(e, 10) for e in range(10)]
    assert stages[0] == 0 and stages[-1] == 4 and stages == sorted(stages)
    dropout = model.net.class_layers.out[0]
    assert isinstance(dropout, torch.nn.Dropout) and dropout.p == 0.2


def test_patchmax_scores_tiles_and_ignores_background() -> None:
    model = A.build_model("patchmax", **A.default_kwargs("patchmax", fast=True)).eval()
    assert isinstance(model, A.PatchMaxClassifier)
    x = torch.zeros(2, 1, 64, 64)
    x[0, :, :32, :32] = 0.5
    with torch.no_grad():
        out = model(x)
        tile = model.base(x[:1, :, :32, :32])
    assert out.shape == (2, 1)
    assert torch.allclose(out[0], tile[0], atol=1e-5)  # only the one breast tile counts
