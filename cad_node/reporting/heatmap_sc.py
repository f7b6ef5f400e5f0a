"""Secondary Capture heatmaps: one RGB image per analysed view, filed in the analysed study.

The Grad-CAM heatmap (or lesion map) is blended over the mammogram as displayed and labelled
with the view, the score, the model and the not-for-diagnosis mark; a localising model's
findings are drawn as circles with their scores (:mod:`cad_node.reporting.overlay`). All of
it is burned in (Burned In Annotation YES). Patient and study come from the study's reference
source; the image itself names its source in Source Image Sequence, its side in Image
Laterality and its view in the Derivation Description. Pixels keep the source's grid
(downsized to at most 1024 rows), so the source's Patient Orientation is copied when it is
valid and left empty otherwise.
"""

from __future__ import annotations

from typing import Final

from highdicom.sc import SCImage
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from cad_node.reporting import codes
from cad_node.reporting.common import (
    HEATMAP_SERIES,
    Algorithm,
    AnalysedImage,
    Inputs,
    fit_lo,
    patient_orientation,
)
from cad_node.reporting.overlay import NOT_FOR_DIAGNOSIS, overlay_pixels
from cad_node.results import DECISION_SUPPORT

_PLACEHOLDER_ORIENTATION: Final = ("A", "F")
"""highdicom requires an orientation for patient images; replaced by the source's or empty."""


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
