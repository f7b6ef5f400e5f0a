"""cad-node: a DICOM computer-aided detection node for screening mammography.

Outputs are decision support for a radiologist, never a diagnosis.
"""

__version__ = "0.1.0"
