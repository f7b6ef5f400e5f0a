"""Heatmap overlays a person can look at: the mammogram in grey, the map in colour, labelled.

:func:`overlay_pixels` is the one place the burned-in picture is made: the heatmap secondary
capture sent to PACS and the PNG files of ``cad-node predict --heatmaps`` are the same
pixels. The label names the view, the score and the model and says the image is not for
diagnosis; a localising model's findings are drawn as circles with their scores.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from cad_node.reporting.common import Algorithm, AnalysedImage, ReportingError, score_text
from cad_node.results import Finding

NOT_FOR_DIAGNOSIS: Final = "AI heatmap - decision support, not for diagnosis"
MAX_ROWS: Final = 1024
"""Overlays of larger mammograms are downsized to this many rows."""
MARK_COLOUR: Final = (255, 255, 0)
MARK_STROKE: Final = (0, 0, 0)
"""Text and marks are yellow with a black edge, legible over both the grey mammogram and the
colour heatmap."""


def _colormap(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    from matplotlib import colormaps

    rgba = colormaps["jet"](np.clip(values, 0.0, 1.0))
    return np.asarray(rgba[..., :3], dtype=np.float32)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def _text_size(rgb: npt.NDArray[np.uint8]) -> int:
    return max(12, int(rgb.shape[0]) // 48)


def blend(
    image: npt.NDArray[np.float32],
    heatmap: npt.NDArray[np.float32],
    *,
    max_rows: int | None = MAX_ROWS,
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
    size = _text_size(rgb)
    font = _font(size)
    y = size // 2
    for text in [*lines, NOT_FOR_DIAGNOSIS]:
        draw.text(
            (size // 2, y),
            text,
            fill=MARK_COLOUR,
            font=font,
            stroke_width=2,
            stroke_fill=MARK_STROKE,
        )
        y += int(size * 1.3)
    return np.asarray(canvas)


def draw_findings(
    rgb: npt.NDArray[np.uint8], findings: list[Finding], scale: float
) -> npt.NDArray[np.uint8]:
    """Each finding as a circle with its score beside it, in the label's colours.

    ``scale`` maps source pixels onto ``rgb`` (which may be downsized); centres are array
    indices on both grids.
    """
    if not findings:
        return rgb
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    size = _text_size(rgb)
    font = _font(size)
    width = max(1, rgb.shape[0] // 256)
    for d in findings:
        cx = (d.x + 0.5) * scale - 0.5
        cy = (d.y + 0.5) * scale - 0.5
        r = max(d.radius * scale, 2.0)
        box = (cx - r, cy - r, cx + r, cy + r)
        draw.ellipse(box, outline=MARK_STROKE, width=width + 2)
        draw.ellipse(box, outline=MARK_COLOUR, width=width)
        text = score_text(d.score)
        x = cx + r * 0.71 + width
        if x + draw.textlength(text, font=font) > rgb.shape[1]:  # no room on the right
            x = cx - r * 0.71 - width - draw.textlength(text, font=font)
        draw.text(
            (x, max(cy - r * 0.71 - size, 0.0)),
            text,
            fill=MARK_COLOUR,
            font=font,
            stroke_width=2,
            stroke_fill=MARK_STROKE,
        )
    return np.asarray(canvas)


def overlay_pixels(image: AnalysedImage, algorithm: Algorithm) -> npt.NDArray[np.uint8]:
    """The labelled RGB overlay of one analysed image, with its findings marked.

    Raises:
        ReportingError: the image was analysed without heatmaps.
    """
    result = image.result
    if result.display is None or result.heatmap is None:
        raise ReportingError(
            f"image {result.sop_instance_uid} was analysed without heatmaps; "
            "run the analysis with heatmaps=True"
        )
    verdict = "at/above threshold" if result.suspicious else "below threshold"
    rgb = blend(result.display, result.heatmap, max_rows=MAX_ROWS)
    if algorithm.localises:
        rgb = draw_findings(rgb, image.findings, rgb.shape[0] / result.display.shape[0])
    return label(
        rgb,
        [
            f"{result.view}  score {score_text(result.score)} ({verdict})",
            algorithm.label + (" - MODEL NOT VALIDATED" if algorithm.caveat else ""),
        ],
    )
