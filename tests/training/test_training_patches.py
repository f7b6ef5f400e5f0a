"""Lesion patches: coordinates through the preprocessing record, training images only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cad_node.training import datasets as dsets
from cad_node.training import train as T


def test_lesion_points_land_on_breast(mias_dir: Path) -> None:
    samples = [
        s for s in dsets.load_samples(mias_dir / "mias_labels.csv") if s.sample_id == "mdb023"
    ]
    lesions = dsets.load_mias_lesions(mias_dir / "mias_abnormalities.csv")
    (points,) = dsets.lesion_points(samples, lesions, 1.6, (128, 128))
    images = dsets.preprocess_samples(samples, 1.6, (128, 128), progress=False)
    (row, col, radius, malignant) = points[0]
    assert malignant  # mdb023 is a malignant circumscribed mass
    assert 0 <= row < 128 and 0 <= col < 128 and radius > 0
    assert images[0, 0, round(row), round(col)] > 0.2  # inside the breast, not padding


def test_patches_come_from_training_images_only() -> None:
    images = np.stack([np.full((1, 32, 32), 0.1 + i / 100, np.float32) for i in range(6)])
    points: list[list[dsets.LesionPoint]] = [
        [(16.0, 16.0, 3.0, i == 1)] if i % 2 else [] for i in range(6)
    ]
    patches, labels = T.extract_patches(images, points, [0, 1, 2], 8, seed=0)
    assert patches.shape[1:] == (1, 8, 8) and len(patches) == len(labels)
    assert labels.sum() == 8  # one lesion among the training images, 8 jittered crops
    _, malignant_only = T.extract_patches(images, points, [3], 8, seed=0, task="malignant")
    assert malignant_only.sum() == 0  # a benign lesion is a negative for the malignant task
    values = {round(float(v), 4) for v in np.unique(patches)}
    assert values <= {0.0, 0.1, 0.11, 0.12}
