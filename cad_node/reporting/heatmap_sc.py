"""Secondary Capture heatmaps: one RGB image per analysed view, filed in the analysed study.

The Grad-CAM heatmap (or lesion map) is blended over the mammogram as displayed and labelled
with the view, the score, the model and the not-for-diagnosis mark; a localising model's
detections are drawn as circles with their scores. All of it is burned in (Burned In
Annotation YES). Patient and study come from the study's reference source; the image itself
names its source in Source Image Sequence, its side in Image Laterality and its view in
the Derivation Description. Pixels keep the source's grid (downsized to at most 1024 rows),
so the source's Patient Orientation is copied when it is valid and left empty otherwise.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from highdicom.sc import SCImage
from highdicom.sr import CodedConcept
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from cad_node.inference.overlay import NOT_FOR_DIAGNOSIS, blend, label
from cad_node.inference.predict import DECISION_SUPPORT
from cad_node.reporting import codes
from cad_node.reporting.common import (
    HEATMAP_SERIES,
    Algorithm,
    AnalysedImage,
    Detection,
    Inputs,
    ReportingError,
    fit_lo,
    patient_orientation,
    score_text,
)

MAX_ROWS: Final = 1024
MARK_COLOUR: Final = (255, 255, 0)
MARK_STROKE: Final = (0, 0, 0)
"""Detections are drawn like the burned-in label: yellow with a black edge, legible over
both the grey mammogram and the colour heatmap."""

_PLACEHOLDER_ORIENTATION: Final = ("A", "F")
"""highdicom requires an orientation for patient images; replaced by the source's or empty."""


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def draw_detections(
    rgb: npt.NDArray[np.uint8], detections: list[Detection], scale: float
) -> npt.NDArray[np.uint8]:
    """Each detection as a circle with its score beside it, in the label's colours.

    ``scale`` maps source pixels onto ``rgb`` (which may be downsized); centres are array
    indices on both grids.
    """
    if not detections:
        return rgb
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    size = max(12, rgb.shape[0] // 48)
    font = _font(size)
    width = max(1, rgb.shape[0] // 256)
    for d in detections:
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


def overlay_pixels(image: AnalysedImage, algorithm: Algorithm) -> np.ndarray:
    """The labelled RGB overlay of one analysed image, with its detections marked."""
    result = image.result
    if result.display is None or result.heatmap is None:
        raise ReportingError(
            f"image {result.sop_instance_uid} was analysed without heatmaps; "
            "run the analysis with heatmaps=True"
        )
    verdict = "at/above threshold" if result.suspicious else "below threshold"
    rgb = blend(result.display, result.heatmap, max_rows=MAX_ROWS)
    if algorithm.localises:
        rgb = draw_detections(rgb, image.detections, rgb.shape[0] / result.display.shape[0])
    return label(
        rgb,
        [
            f"{result.view}  score {score_text(result.score)} ({verdict})",
            algorithm.label + (" - MODEL NOT VALIDATED" if algorithm.caveat else ""),
        ],
    )


def build_heatmap_sc(
    inputs: Inputs,
    image: AnalysedImage,
    algorithm: Algorithm,
    *,
    series_instance_uid: UID,
    instance_number: int,
    sop_instance_uid: UID | None = None,
) -> SCImage:
    """One heatmap Secondary Capture of one analysed image."""
    source = image.source
    orientation = patient_orientation(source)
    what = (
        "the lesion map (inside the breast) and the detections"
        if algorithm.localises
        else "Grad-CAM"
    )
    description = (
        f"AI heatmap {image.result.view} ({algorithm.label}): {what} blended over the "
        f"source image. {NOT_FOR_DIAGNOSIS}. {DECISION_SUPPORT}{algorithm.caveat_sentence}"
    )
    sc = SCImage.from_ref_dataset(
        ref_dataset=inputs.study_reference,
        pixel_array=overlay_pixels(image, algorithm),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=HEATMAP_SERIES,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        patient_orientation=orientation or _PLACEHOLDER_ORIENTATION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[algorithm.contributing_equipment()],
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        series_description=fit_lo("AI heatmaps ({label}) - not for diagnosis", algorithm.label),
    )
    if orientation is None:
        sc.PatientOrientation = []  # Type 2: unknown for this source
    sc.BurnedInAnnotation = "YES"
    sc.ImageLaterality = image.laterality.value
    sc.DerivationDescription = description[:1024]
    sc.ImageComments = description[:10240]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [
        CodedConcept.from_code(codes.SOURCE_IMAGE_FOR_PROCESSING)
    ]
    sc.SourceImageSequence = [reference]
    return sc


def build_heatmap_scs(inputs: Inputs, algorithm: Algorithm) -> list[SCImage]:
    """One heatmap per analysed image, in view order, in one new series."""
    inputs.check_localisation(algorithm)
    series = generate_uid()
    return [
        build_heatmap_sc(inputs, image, algorithm, series_instance_uid=series, instance_number=n)
        for n, image in enumerate(inputs.images, start=1)
    ]
