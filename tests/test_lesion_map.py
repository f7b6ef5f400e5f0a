"""Detections from a lesion map."""

from __future__ import annotations

import numpy as np

from cad_node.lesion_map import detections_from_map


def test_detections_are_local_maxima_inside_the_breast_best_first() -> None:
    prob = np.zeros((8, 8))
    prob[2, 3] = 0.9
    prob[2, 4] = 0.5  # shoulder of the first peak, not a maximum
    prob[6, 6] = 0.7
    prob[0, 7] = 0.99  # outside the breast
    mask = np.ones((8, 8), bool)
    mask[0, 7] = False
    found = detections_from_map(prob, mask, min_score=0.1, stride=16)
    assert [(d.row, d.col) for d in found] == [
        (2.5 * 16 - 0.5, 3.5 * 16 - 0.5),
        (6.5 * 16 - 0.5, 6.5 * 16 - 0.5),
    ]
    assert found[0].score == 0.9 and found[0].radius > found[1].radius
