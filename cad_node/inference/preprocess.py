"""Pixels to model input and back: the one preprocessing shared by serving and training.

Serving and training both call this module so that the model always sees images prepared the
same way. Every function is pure: it reads only its arguments (and the given dataset's pixels).

Pipeline, each geometric step recorded in :class:`PreprocessRecord` so that a heatmap on the
model grid can be mapped back onto the source pixels (:func:`heatmap_to_source`):

1. **Intensities** (:func:`pixels_from_dataset`): decode, Modality LUT / rescale, VOI LUT or
   window (min-max when there is none), MONOCHROME1 inverted; float32 in [0, 1] with bright =
   dense tissue. Arrays (PNG training data) are min-max normalised unless already in [0, 1].
2. **Orientation**: the image is mirrored left-right when needed so that the **chest wall is on
   the left and the breast points right** (the usual display of a left breast). The side comes
   from PatientOrientation's row direction (``A`` = rows run towards the nipple), else from
   laterality with the standard display (right breast: chest wall on the right), and the image
   content (the chest-wall side of the breast mask is the tall one) decides when the tags are
   missing or clearly contradicted.
3. **Crop**: on a block-mean copy (longer side <= ``mask_size``), a threshold just above the
   background (10 % of the way from the triangle threshold to Otsu's: fatty tissue stays in,
   film-edge glow goes out), openings with horizontal and vertical lines (detach film-edge
   strips and text), the largest connected component, its bounding box plus a small margin.
4. **Resample and pad**: scale to ``spacing_mm`` per pixel (just fit to the size when the spacing
   is unknown), shrink further when the crop does not fit, keep the aspect ratio, then pad with
   the chest wall flush with the left edge and the breast centred vertically.

Coordinates are continuous pixel-centre coordinates: pixel ``(i, j)`` has its centre at
``(i, j)``; a scale ``s`` maps ``x`` to ``(x + 0.5) * s - 0.5``, which is what bilinear
resampling with ``align_corners=False`` does, so points and heatmaps invert consistently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
import torch
import torch.nn.functional as F
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from scipy import ndimage
from skimage.filters import threshold_otsu as _skimage_otsu
from skimage.filters import threshold_triangle as _skimage_triangle

from cad_node.assembly import dataset_laterality as assembly_laterality
from cad_node.errors import InvalidDatasetError, NotAnalysableError
from cad_node.inference.decode import decode_first_frame

FloatImage = npt.NDArray[np.float32]
OrientationBasis = Literal["orientation", "laterality", "image", "default"]

__all__ = [
    "OrientationBasis",
    "PreprocessConfig",
    "PreprocessRecord",
    "Preprocessed",
    "chest_wall_score",
    "dataset_laterality",
    "dataset_spacing_mm",
    "heatmap_to_source",
    "model_point_to_source",
    "normalize_intensity",
    "pixels_from_dataset",
    "preprocess_array",
    "preprocess_dataset",
    "source_point_to_model",
]

# scikit-image is untyped; its thresholds take an image and return a number.
_triangle: Callable[[FloatImage], float] = _skimage_triangle
_otsu: Callable[[FloatImage], float] = _skimage_otsu

# Luma weights (ITU-R BT.601) for the rare colour secondary capture.
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become model inputs; serving and training must use equal configs.

    ``crop_threshold`` is an absolute intensity in [0, 1] for the breast mask; ``None`` puts it
    ``crop_level`` of the way from the image's triangle threshold (top of the background peak)
    to its Otsu threshold (which splits dense from fatty tissue, too high on its own).
    ``crop_margin`` is a fraction of the source's longer side added around the breast.
    ``mask_size`` is the longer side of the downsampled copy the breast mask is computed on.
    ``opening_fraction`` is the length of the opening lines as a fraction of that copy's longer
    side: thinner structures (film-edge strips, text) are dropped before the largest component.
    ``image_override`` is the chest-wall score (see :func:`chest_wall_score`) above which the
    image content overrules the orientation tags.
    """

    spacing_mm: float = 0.4
    size: tuple[int, int] = (512, 512)
    crop_threshold: float | None = None
    crop_level: float = 0.1
    crop_margin: float = 0.01
    mask_size: int = 512
    opening_fraction: float = 0.05
    image_override: float = 0.3
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise ValueError(f"spacing_mm must be a positive number, got {self.spacing_mm}")
        if len(self.size) != 2 or min(self.size) < 8:
            raise ValueError(f"size must be (rows, cols) of at least 8 pixels, got {self.size}")
        if self.crop_threshold is not None and not 0.0 <= self.crop_threshold < 1.0:
            raise ValueError("crop_threshold must be in [0, 1)")
        if not 0.0 <= self.crop_level <= 1.0:
            raise ValueError("crop_level must be in [0, 1]")
        if not 0.0 <= self.crop_margin < 0.5:
            raise ValueError("crop_margin must be in [0, 0.5)")
        if self.mask_size < 32:
            raise ValueError("mask_size must be at least 32")
        if not 0.0 <= self.opening_fraction < 0.25:
            raise ValueError("opening_fraction must be in [0, 0.25)")
        if not 0.0 < self.image_override <= 1.0:
            raise ValueError("image_override must be in (0, 1]")
        if not 0.0 <= self.pad_value <= 1.0:
            raise ValueError("pad_value must be in [0, 1]")


@dataclass(frozen=True)
class PreprocessRecord:
    """Every geometric step from the source image to the model grid, enough to invert it.

    Order of the forward steps: mirror left-right (``flipped``), crop ``crop`` (half-open
    ``(row0, row1, col0, col1)`` in the *mirrored* frame), resize by ``scale`` (model pixels per
    source pixel, rows and cols) to ``resized_shape``, paste at ``offset`` into ``model_shape``.
    """

    source_shape: tuple[int, int]
    flipped: bool
    crop: tuple[int, int, int, int]
    scale: tuple[float, float]
    resized_shape: tuple[int, int]
    offset: tuple[int, int]
    model_shape: tuple[int, int]
    source_spacing_mm: tuple[float, float] | None = None
    laterality: str | None = None
    orientation_basis: OrientationBasis = "default"
    chest_wall_score: float = 0.0

    @property
    def crop_in_source(self) -> tuple[int, int, int, int]:
        """The crop box ``(row0, row1, col0, col1)`` in the unmirrored source frame."""
        row0, row1, col0, col1 = self.crop
        if not self.flipped:
            return self.crop
        width = self.source_shape[1]
        return row0, row1, width - col1, width - col0

    def source_to_model(self, row: float, col: float) -> tuple[float, float]:
        """Map a source pixel-centre coordinate onto the model grid."""
        if self.flipped:
            col = self.source_shape[1] - 1 - col
        row0, _, col0, _ = self.crop
        model_row = (row - row0 + 0.5) * self.scale[0] - 0.5 + self.offset[0]
        model_col = (col - col0 + 0.5) * self.scale[1] - 0.5 + self.offset[1]
        return model_row, model_col

    def model_to_source(self, row: float, col: float) -> tuple[float, float]:
        """Map a model-grid coordinate back onto the source pixel grid."""
        row0, _, col0, _ = self.crop
        source_row = (row - self.offset[0] + 0.5) / self.scale[0] - 0.5 + row0
        source_col = (col - self.offset[1] + 0.5) / self.scale[1] - 0.5 + col0
        if self.flipped:
            source_col = self.source_shape[1] - 1 - source_col
        return source_row, source_col


@dataclass(frozen=True)
class Preprocessed:
    """A model input, float32 ``(1, rows, cols)`` in [0, 1], and how it was made."""

    image: FloatImage
    record: PreprocessRecord


# --------------------------------------------------------------------------------------------
# Intensities


def pixels_from_dataset(ds: pydicom.Dataset) -> FloatImage:
    """Decode a dataset's first frame into a display-ready float32 image in [0, 1].

    Applies the Modality LUT / rescale, then the VOI LUT or first window (min-max normalisation
    when neither is present, or when they are unusable), and inverts MONOCHROME1 so that bright
    always means dense. Multi-frame images give their first frame.

    Raises:
        InvalidDatasetError: no pixel data, or the pixel data cannot be decoded.
        NotAnalysableError: a photometric interpretation a mammogram never has (palette colour).
    """
    if "PixelData" not in ds:
        raise InvalidDatasetError("dataset has no Pixel Data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise NotAnalysableError("palette colour images cannot be analysed")
    raw = decode_first_frame(ds)

    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples > 1:
        if raw.ndim != 3 or raw.shape[-1] < 3:
            raise InvalidDatasetError(f"unexpected colour pixel array shape {raw.shape}")
        luma = raw[..., :3].astype(np.float64) @ _LUMA
        bits = int(ds.get("BitsStored") or 8)
        colour: FloatImage = np.clip(luma / float(2**bits - 1), 0.0, 1.0).astype(np.float32)
        return colour
    if raw.ndim != 2:
        raise InvalidDatasetError(f"unexpected pixel array shape {raw.shape}")

    try:
        values = apply_modality_lut(raw, ds)
    except Exception as exc:
        raise InvalidDatasetError(f"unusable Modality LUT / rescale: {type(exc).__name__}") from exc
    image = _apply_voi(np.asarray(values), ds)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image


def normalize_intensity(image: npt.ArrayLike) -> FloatImage:
    """Float32 in [0, 1]: kept as is when already a float image in [0, 1], else min-max.

    The same rule for every dtype (uint8 or float32 holding 0..255 give the same result), so
    training data read one way or another does not drift. May return the input itself (no
    copy) when it is already float32 in [0, 1]; nothing here writes to it.

    Raises:
        NotAnalysableError: the image has non-finite values.
    """
    arr = np.asarray(image)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())  # NaN and inf show up here
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NotAnalysableError("image has non-finite pixel values")
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return arr.astype(np.float32, copy=False)
    return _min_max(arr, lo, hi)


def _min_max(arr: npt.NDArray[Any], lo: float | None = None, hi: float | None = None) -> FloatImage:
    """Linear map of the array's range onto [0, 1]; a constant array becomes all zeros."""
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.float32)
    lo = float(arr.min()) if lo is None else lo
    hi = float(arr.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    out = arr.astype(np.float32)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def _has_voi_lut(ds: pydicom.Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    if not seq:
        return False
    item = seq[0]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


def _apply_voi(values: npt.NDArray[Any], ds: pydicom.Dataset) -> FloatImage:
    """VOI LUT (preferred) or window, scaled by its output range; min-max when there is none."""
    has_lut = _has_voi_lut(ds)
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return _min_max(values)
    if has_lut and not np.issubdtype(values.dtype, np.integer):
        rounded = np.rint(values)
        if np.array_equal(rounded, values):  # an identity rescale: LUTs index integers
            values = rounded.astype(np.int64)
    try:
        out = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        lo, hi = _voi_output_range(ds, use_lut=has_lut)
    except Exception:  # a broken window/LUT should not stop analysis: fall back to min-max
        return _min_max(values)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return _min_max(values)
    return np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _voi_output_range(ds: pydicom.Dataset, *, use_lut: bool) -> tuple[float, float]:
    """The range the VOI transform can output, found by probing it with its whole input range."""
    if use_lut:
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries = int(descriptor[0]) or 2**16
        first = int(descriptor[1])
        probe: npt.NDArray[Any] = np.arange(first, first + entries, dtype=np.int64)
    else:
        probe = np.array([-1e300, 1e300])
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(apply_voi_lut(probe, ds, index=0), dtype=np.float64)
    return float(out.min()), float(out.max())


# --------------------------------------------------------------------------------------------
# Tags


def dataset_laterality(ds: pydicom.Dataset) -> str | None:
    """``"L"`` or ``"R"`` as study assembly reads it; ``None`` when the tags do not say."""
    value = assembly_laterality(ds)
    return None if value is None else str(value)


def dataset_spacing_mm(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(row, col) spacing in mm from ImagerPixelSpacing, else PixelSpacing; ``None`` if unknown.

    ImagerPixelSpacing (at the detector) comes first: every digital mammogram has it, whereas
    PixelSpacing is optional and vendor-calibrated, so the model sees one consistent scale.
    """
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = ds.get(keyword)
        try:
            pair = (float(value[0]), float(value[1])) if value is not None else None
        except (TypeError, ValueError, IndexError):
            pair = None
        if pair is not None and all(math.isfinite(v) and v > 0 for v in pair):
            return pair
    return None


def _laterality(value: object) -> str | None:
    text = str(value).strip().upper() if value is not None else ""
    return text if text in ("L", "R") else None


def _row_direction(patient_orientation: Sequence[str] | str | None) -> str | None:
    """``"A"`` or ``"P"``: where rows run (left to right); ``None`` when not stated clearly."""
    if patient_orientation is None or isinstance(patient_orientation, str):
        return None
    values = [str(v).strip().upper() for v in patient_orientation]
    if len(values) != 2:
        return None
    has_a, has_p = "A" in values[0], "P" in values[0]
    if has_a == has_p:
        return None
    return "A" if has_a else "P"


# --------------------------------------------------------------------------------------------
# Geometry


def _spacing_pair(spacing_mm: float | Sequence[float] | None) -> tuple[float, float] | None:
    if spacing_mm is None:
        return None
    if isinstance(spacing_mm, int | float):
        pair = (float(spacing_mm), float(spacing_mm))
    else:
        values = [float(v) for v in spacing_mm]
        if len(values) != 2:
            raise ValueError(f"spacing_mm must be one number or (row, col), got {spacing_mm}")
        pair = (values[0], values[1])
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    return pair


def _downsample(image: FloatImage, max_side: int) -> tuple[FloatImage, int]:
    """Block mean by an integer factor so the longer side is at most ``max_side``."""
    factor = max(1, math.ceil(max(image.shape) / max_side))
    if factor == 1:
        return image, 1
    rows, cols = image.shape[0] // factor, image.shape[1] // factor
    if rows == 0 or cols == 0:
        return image, 1
    tensor = torch.from_numpy(np.ascontiguousarray(image))  # pooling drops the remainder
    with torch.inference_mode():
        pooled = F.avg_pool2d(tensor[None, None], kernel_size=factor)
    small: FloatImage = pooled[0, 0].numpy()
    return small, factor


def _auto_threshold(small: FloatImage, level: float) -> float:
    """``level`` of the way from the triangle threshold (background) to Otsu's (tissue)."""
    if small.max() <= small.min():
        return 1.0
    tissue = float(_otsu(small))
    # The triangle method takes the tallest histogram peak for the background; when the breast
    # fills most of the frame that peak is tissue and the threshold would land above it.
    background = min(float(_triangle(small)), tissue)
    return background + level * (tissue - background)


def _breast_mask(small: FloatImage, config: PreprocessConfig) -> npt.NDArray[np.bool_]:
    """Largest component above a background threshold, thin strips and labels removed first.

    The triangle threshold sits just above the (usually clipped) background peak, so fatty
    tissue near the skin stays in; Otsu would split dense from fatty tissue. Openings with a
    horizontal, then a vertical line remove structures thinner than ``opening_fraction`` of the
    longer side: film-edge strips that touch the breast, text, scanner lines.
    """
    if config.crop_threshold is not None:
        threshold = config.crop_threshold
    else:
        threshold = _auto_threshold(small, config.crop_level)
    mask = small > threshold
    length = round(config.opening_fraction * max(small.shape))
    if length >= 2:
        opened = ndimage.binary_opening(mask, structure=np.ones((1, length), dtype=bool))
        opened = ndimage.binary_opening(opened, structure=np.ones((length, 1), dtype=bool))
        if opened.any():
            mask = opened
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    result: npt.NDArray[np.bool_] = labels == int(np.argmax(sizes))
    return result


def chest_wall_score(mask: npt.NDArray[np.bool_]) -> float:
    """Which side of a breast mask is the chest wall: > 0 left, < 0 right, in [-1, 1].

    A breast is tall at the chest wall and tapers towards the nipple, so the mask covers more of
    the outer columns on the chest-wall side: the score compares the mean coverage of the left
    and right 15 % of the mask's bounding box. A half-ellipse scores about 0.5.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0.0
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    band = max(1, round(0.15 * box.shape[1]))
    left = float(box[:, :band].mean())
    right = float(box[:, -band:].mean())
    return (left - right) / (left + right) if left + right > 0 else 0.0


def _find_breast(
    image: FloatImage, config: PreprocessConfig
) -> tuple[tuple[int, int, int, int], float]:
    """Breast bounding box ``(row0, row1, col0, col1)`` in the given frame, and its side score."""
    height, width = image.shape
    small, factor = _downsample(image, config.mask_size)
    mask = _breast_mask(small, config)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, height, 0, width), 0.0
    row0, col0 = int(rows[0]) * factor, int(cols[0]) * factor
    row1 = height if rows[-1] + 1 >= small.shape[0] else int(rows[-1] + 1) * factor
    col1 = width if cols[-1] + 1 >= small.shape[1] else int(cols[-1] + 1) * factor
    margin = round(config.crop_margin * max(height, width))
    box = (
        max(0, row0 - margin),
        min(height, row1 + margin),
        max(0, col0 - margin),
        min(width, col1 + margin),
    )
    return box, chest_wall_score(mask)


def _decide_flip(
    laterality: str | None,
    row_direction: str | None,
    score: float,
    config: PreprocessConfig,
) -> tuple[bool, OrientationBasis]:
    """Whether to mirror the image so the chest wall ends up on the left, and on what basis."""
    tag_left: bool | None = None
    basis: OrientationBasis = "default"
    if row_direction is not None:
        tag_left, basis = row_direction == "A", "orientation"
    elif laterality is not None:
        tag_left, basis = laterality == "L", "laterality"
    image_left = score > 0
    if tag_left is None:
        if score == 0:
            return False, "default"
        return not image_left, "image"
    if image_left != tag_left and abs(score) >= config.image_override:
        return not image_left, "image"
    return not tag_left, basis


def _resize(image: FloatImage, shape: tuple[int, int]) -> FloatImage:
    """Bilinear resize (antialiased when shrinking), pixel-centre aligned."""
    if image.shape == shape:
        return image.astype(np.float32, copy=True)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    shrinking = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    with torch.inference_mode():
        out = F.interpolate(
            tensor, size=shape, mode="bilinear", align_corners=False, antialias=shrinking
        )
    result: FloatImage = out[0, 0].numpy().astype(np.float32, copy=False)
    return result


def _fit_scale(
    crop_shape: tuple[int, int],
    spacing: tuple[float, float] | None,
    config: PreprocessConfig,
) -> tuple[int, int]:
    """Resized crop shape: model spacing when known (shrunk to fit), else fit to the size."""
    height, width = crop_shape
    max_rows, max_cols = config.size
    if spacing is not None:
        scale_r, scale_c = spacing[0] / config.spacing_mm, spacing[1] / config.spacing_mm
        fit = min(1.0, max_rows / (height * scale_r), max_cols / (width * scale_c))
        scale_r, scale_c = scale_r * fit, scale_c * fit
    else:
        scale_r = scale_c = min(max_rows / height, max_cols / width)
    rows = min(max_rows, max(1, round(height * scale_r)))
    cols = min(max_cols, max(1, round(width * scale_c)))
    return rows, cols


# --------------------------------------------------------------------------------------------
# Public pipeline


def preprocess_array(
    image: npt.ArrayLike,
    *,
    laterality: str | None,
    spacing_mm: float | Sequence[float] | None,
    config: PreprocessConfig = PreprocessConfig(),
    patient_orientation: Sequence[str] | None = None,
) -> Preprocessed:
    """Turn a 2-D image into a model input, recording every geometric step.

    Args:
        image: 2-D grayscale pixels, bright = dense; see :func:`normalize_intensity`.
        laterality: ``"L"``/``"R"`` (anything else counts as unknown).
        spacing_mm: source pixel spacing, one number or (row, col); ``None`` fits to the size.
        config: the model's preprocessing settings.
        patient_orientation: PatientOrientation values; its row direction outranks laterality.

    Raises:
        NotAnalysableError: not a 2-D image, too small, blank or non-finite.
        ValueError: a non-positive spacing.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise NotAnalysableError(f"expected a 2-D grayscale image, got shape {arr.shape}")
    if min(arr.shape) < 16:
        raise NotAnalysableError(f"image too small to analyse: {arr.shape}")
    pixels = normalize_intensity(arr)
    if float(pixels.max()) - float(pixels.min()) < 1e-6:  # cheap next to the rest
        raise NotAnalysableError("image is blank (no contrast)")
    spacing = _spacing_pair(spacing_mm)
    side = _laterality(laterality)

    box, score = _find_breast(pixels, config)
    flipped, basis = _decide_flip(side, _row_direction(patient_orientation), score, config)
    height, width = pixels.shape
    row0, row1, col0, col1 = box
    if flipped:
        pixels = pixels[:, ::-1]
        col0, col1 = width - col1, width - col0
    crop = pixels[row0:row1, col0:col1]

    resized_shape = _fit_scale(crop.shape, spacing, config)
    resized = _resize(crop, resized_shape)
    rows, cols = config.size
    offset = ((rows - resized_shape[0]) // 2, 0)
    canvas = np.full((1, rows, cols), config.pad_value, dtype=np.float32)
    canvas[
        0, offset[0] : offset[0] + resized_shape[0], offset[1] : offset[1] + resized_shape[1]
    ] = np.clip(resized, 0.0, 1.0)

    record = PreprocessRecord(
        source_shape=(height, width),
        flipped=flipped,
        crop=(row0, row1, col0, col1),
        scale=(resized_shape[0] / crop.shape[0], resized_shape[1] / crop.shape[1]),
        resized_shape=resized_shape,
        offset=offset,
        model_shape=(rows, cols),
        source_spacing_mm=spacing,
        laterality=side,
        orientation_basis=basis,
        chest_wall_score=score,
    )
    return Preprocessed(image=canvas, record=record)


def preprocess_dataset(
    ds: pydicom.Dataset,
    config: PreprocessConfig = PreprocessConfig(),
    *,
    pixels: FloatImage | None = None,
) -> Preprocessed:
    """Decode a DICOM image and turn it into a model input (see :func:`preprocess_array`).

    ``pixels`` is the result of :func:`pixels_from_dataset` when the caller already has it.
    """
    orientation = ds.get("PatientOrientation")
    return preprocess_array(
        pixels if pixels is not None else pixels_from_dataset(ds),
        laterality=dataset_laterality(ds),
        spacing_mm=dataset_spacing_mm(ds),
        config=config,
        patient_orientation=list(orientation) if orientation is not None else None,
    )


def heatmap_to_source(heatmap: npt.ArrayLike, record: PreprocessRecord) -> FloatImage:
    """Map a model-grid heatmap back onto the source pixel grid (zero outside the crop).

    Accepts ``(rows, cols)`` or ``(1, rows, cols)`` of the model shape; returns float32 with the
    source image's shape, undoing padding, resizing, cropping and mirroring.
    """
    arr = np.asarray(heatmap, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != record.model_shape:
        raise ValueError(f"heatmap shape {arr.shape} is not the model shape {record.model_shape}")
    off_r, off_c = record.offset
    inner = arr[off_r : off_r + record.resized_shape[0], off_c : off_c + record.resized_shape[1]]
    row0, row1, col0, col1 = record.crop
    out = np.zeros(record.source_shape, dtype=np.float32)
    out[row0:row1, col0:col1] = _resize(inner, (row1 - row0, col1 - col0))
    return np.ascontiguousarray(out[:, ::-1]) if record.flipped else out


def model_point_to_source(row: float, col: float, record: PreprocessRecord) -> tuple[float, float]:
    """A model-grid point (pixel-centre coordinates) on the source pixel grid."""
    return record.model_to_source(row, col)


def source_point_to_model(row: float, col: float, record: PreprocessRecord) -> tuple[float, float]:
    """A source pixel-centre point on the model grid."""
    return record.source_to_model(row, col)
