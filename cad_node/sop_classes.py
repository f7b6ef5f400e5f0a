"""SOP classes and transfer syntaxes the node speaks, with their roles."""

from __future__ import annotations

from typing import Final

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

VERIFICATION: Final = UID("1.2.840.10008.1.1")
MAMMOGRAPHY_FOR_PRESENTATION: Final = UID("1.2.840.10008.5.1.4.1.1.1.2")
MAMMOGRAPHY_FOR_PROCESSING: Final = UID("1.2.840.10008.5.1.4.1.1.1.2.1")
BREAST_TOMOSYNTHESIS: Final = UID("1.2.840.10008.5.1.4.1.1.13.1.3")
SECONDARY_CAPTURE: Final = UID("1.2.840.10008.5.1.4.1.1.7")
MULTIFRAME_GRAYSCALE_BYTE_SC: Final = UID("1.2.840.10008.5.1.4.1.1.7.2")
MULTIFRAME_GRAYSCALE_WORD_SC: Final = UID("1.2.840.10008.5.1.4.1.1.7.3")

STORAGE_SOP_CLASSES: Final[tuple[UID, ...]] = (
    MAMMOGRAPHY_FOR_PRESENTATION,
    MAMMOGRAPHY_FOR_PROCESSING,
    BREAST_TOMOSYNTHESIS,
    SECONDARY_CAPTURE,
    MULTIFRAME_GRAYSCALE_BYTE_SC,
    MULTIFRAME_GRAYSCALE_WORD_SC,
)
"""Accepted by the storage SCP. Archives often hold digitised film as SC with Modality MG."""

NATIVE_TRANSFER_SYNTAXES: Final[tuple[UID, ...]] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)

COMPRESSED_TRANSFER_SYNTAXES: Final[tuple[UID, ...]] = (
    JPEG2000Lossless,
    JPEG2000,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
)


def decodable_transfer_syntaxes() -> list[UID]:
    """Native syntaxes plus every compressed one a pydicom pixel decoder can handle here.

    Accepting only what we can decode means a modality falls back to another syntax
    instead of sending images the node would later fail to analyse.
    """
    from pydicom.pixels.decoders.base import get_decoder

    accepted = list(NATIVE_TRANSFER_SYNTAXES)
    for uid in COMPRESSED_TRANSFER_SYNTAXES:
        try:
            if get_decoder(uid).is_available:
                accepted.append(uid)
        except NotImplementedError:
            continue
    return accepted
