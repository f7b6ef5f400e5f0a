"""Heatmap overlays a person can look at: the mammogram in grey, Grad-CAM in colour, labelled.

Returns RGB arrays, used for PNG files (``cad-node predict --heatmaps``) and for the
secondary-capture images sent to PACS.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

NOT_FOR_DIAGNOSIS = "AI heatmap - decision support, not for diagnosis"


def _colormap(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    from matplotlib import colormaps

    rgba = colormaps["jet"](np.clip(values, 0.0, 1.0))
    return np.asarray(rgba[..., :3], dtype=np.float32)


def blend(
    image: npt.NDArray[np.float32],
    heatmap: npt.NDArray[np.float32],
    *,
    max_rows: int | None = 1024,
    floor: float = 0.2,
) -> npt.NDArray[np.uint8]:
    """Blend a heatmap over a grey image of the same shape (both in [0, 1]) into RGB uint8.

    Values below ``floor`` leave the image untinted; above it the tint grows with the value.
    ``max_rows`` downsizes large mammograms for viewing (None keeps the full size).
    """
    if image.shape != heatmap.shape:
        raise ValueError(f"image {image.shape} and heatmap {heatmap.shape} differ in shape")
    if max_rows is not None and image.shape[0] > max_rows:
        scale = max_rows / image.shape[0]
        size = (max(1, round(image.shape[1] * scale)), max_rows)
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        heatmap = np.asarray(Image.fromarray(heatmap).resize(size, Image.Resampling.BILINEAR))
    grey = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=2)
    alpha = np.clip((heatmap - floor) / (1.0 - floor), 0.0, 1.0)[..., None] * 0.5
    rgb = grey * (1.0 - alpha) + _colormap(heatmap) * alpha
    return np.asarray(np.round(rgb * 255.0), dtype=np.uint8)


def label(rgb: npt.NDArray[np.uint8], lines: list[str]) -> npt.NDArray[np.uint8]:
    """Write ``lines`` and the not-for-diagnosis mark in the top-left corner."""
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    size = max(12, rgb.shape[0] // 48)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        font = ImageFont.load_default()
    y = size // 2
    for text in [*lines, NOT_FOR_DIAGNOSIS]:
        draw.text(
            (size // 2, y),
            text,
            fill=(255, 255, 0),
            font=font,
            stroke_width=2,
            stroke_fill=(0, 0, 0),
        )
        y += int(size * 1.3)
    return np.asarray(canvas)
