"""A model's identity as every output gives it, built once from its manifest (torch-free).

The result objects (through reporting's ``Algorithm``), the job record, ``predict --json``,
the demo and the web console all take a :class:`ModelInfo`, so a model is named, versioned,
fingerprinted and caveated the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cad_node.errors import ModelError
from cad_node.model_folder.folder import default_model_path
from cad_node.model_folder.manifest import LO_MAX, Manifest, read_manifest, validation_warning


@dataclass(frozen=True)
class ModelInfo:
    """Name, version, weights' sha256, operating point(s), validation and what it outputs."""

    name: str
    version: str
    sha256: str
    """Hex sha256 of the weights, as the manifest gives it."""
    threshold: float
    """Operating point: a score at or above it is flagged suspicious."""
    localises: bool = False
    """The model gives lesion detections (a lesion map); else it scores images only."""
    detection_threshold: float | None = None
    """Lesion-map score from which a detection is reported; None for a score model."""
    warning: str | None = None
    """Why the model's scores should not be trusted (:func:`validation_warning`); None when
    it is validated."""

    def __post_init__(self) -> None:
        for key in ("name", "version"):
            value: str = getattr(self, key)
            if not value.strip():
                raise ModelError(f"model {key} is required")
            if len(value) > LO_MAX:  # DICOM LO, as written in every result object
                raise ModelError(f"model {key} {value[:20]!r}... exceeds {LO_MAX} characters")
        if not 0.0 <= self.threshold <= 1.0:
            raise ModelError(f"model threshold {self.threshold!r} is outside [0, 1]")

    @classmethod
    def of(cls, manifest: Manifest) -> ModelInfo:
        return cls(
            name=manifest.name,
            version=manifest.version,
            sha256=manifest.weights_sha256,
            threshold=manifest.threshold,
            localises=manifest.localises,
            detection_threshold=manifest.lesion.detection_threshold if manifest.localises else None,
            warning=validation_warning(manifest),
        )

    @property
    def validated(self) -> bool:
        """Whether the model is shown to be better than chance."""
        return self.warning is None

    def job_record(self) -> dict[str, str]:
        """What a job records of the model that analysed it."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    def summary(self) -> dict[str, Any]:
        """The model as ``predict --json`` gives it."""
        return {
            "name": self.name,
            "version": self.version,
            "threshold": self.threshold,
            "not_validated": self.warning,
        }


def model_info(path: Path | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of a model folder (default: ``models/DEFAULT``), read from its
    manifest without loading the weights; ModelError when there is no model there."""
    return ModelInfo.of(read_manifest(path or default_model_path()))
