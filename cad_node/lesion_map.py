"""Detections from a lesion map: its local maxima, with a centre, a radius and a score.

Torch-free: training (the FROC) and the node (marks in the results) use the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Detection:
    """A local maximum of a lesion map: centre (row, col) and radius in model pixels.

    Coordinates are pixel indices (the first pixel's centre is 0), like
    :meth:`PreprocessRecord.model_to_source` expects.
    """

    row: float
    col: float
    radius: float
    score: float


def detections_from_map(
    prob: npt.NDArray[np.floating[Any]],
    mask: npt.NDArray[np.bool_],
    *,
    min_score: float = 0.0,
    max_detections: int = 10,
    stride: int,
) -> list[Detection]:
    """Local maxima (3x3) of a probability map inside the breast, best first.

    The radius comes from the cells around the peak at half its score or more (5x5 window).
    """
    p = np.where(mask, np.asarray(prob, dtype=np.float64), 0.0)
    padded = np.pad(p, 1, constant_values=-1.0)
    h, w = p.shape
    neighbours = np.stack(
        [
            padded[dr : dr + h, dc : dc + w]
            for dr in range(3)
            for dc in range(3)
            if (dr, dc) != (1, 1)
        ]
    )
    peaks = (p >= neighbours.max(axis=0)) & mask & (p >= min_score) & (p > 0.0)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-p[rows, cols], kind="stable")[:max_detections]
    out = []
    for i in order:
        r, c = int(rows[i]), int(cols[i])
        window = p[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3]
        cells = int((window >= 0.5 * p[r, c]).sum())
        out.append(
            Detection(
                row=(r + 0.5) * stride - 0.5,  # the cell's centre in pixel-index coordinates
                col=(c + 0.5) * stride - 0.5,
                radius=max(math.sqrt(cells / math.pi), 0.5) * stride,
                score=float(p[r, c]),
            )
        )
    return out
