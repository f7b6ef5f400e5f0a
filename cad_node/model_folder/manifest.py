"""A model folder's ``manifest.json`` as one typed, validated, frozen value (torch-free).

Training writes a manifest through :class:`Manifest` (so a written manifest always reads back);
the node reads it with :func:`read_manifest`, which refuses a bad one with a
:class:`~cad_node.errors.ModelError` that names the field. Descriptive sections (training
data, training recipe, metrics beyond the cross-validated estimates) are kept as written;
unknown keys are kept too, so older and newer manifests round-trip.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from cad_node.breast_score import BreastCombiner
from cad_node.errors import ModelError

MANIFEST: Final = "manifest.json"
FORMAT_VERSION: Final = 1
LO_MAX: Final = 64
"""Longest DICOM Long String (LO): the model's name and version are written as LO values."""
LEGACY_SCORE_OUTPUT: Final = "sigmoid probability of the positive class"
"""What classifier exports wrote as ``output`` before the output kinds had names."""


class OutputKind(StrEnum):
    """What a model gives per image."""

    SCORE = "score"
    """One logit per image (the positive class's score); heatmaps by Grad-CAM."""
    SCORE_AND_LESION_MAP = "score+lesion_map"
    """A lesion probability map per image and the image logit pooled from it."""


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class InputSpec(_Part):
    """The preprocessing the model was trained with."""

    spacing_mm: PositiveFloat
    size: tuple[PositiveInt, PositiveInt]
    """Rows and columns of the model's input grid."""
    channels: PositiveInt = 1


class LesionMapSpec(_Part):
    """A lesion model's map: its stride, its channels and which one scores a film."""

    stride: PositiveInt = 1
    channels: tuple[str, ...] = ()
    channel: NonNegativeInt = 0
    detection_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Map score from which a local maximum is reported as a detection."""

    @model_validator(mode="after")
    def _channel_exists(self) -> LesionMapSpec:
        if self.channels and self.channel >= len(self.channels):
            raise ValueError(f"channel {self.channel} is not one of {list(self.channels)}")
        return self


class Estimate(_Part):
    """A metric's value and its 95% confidence interval."""

    value: float
    ci95: tuple[float, float] | None = None


class Metrics(_Part):
    """The manifest's ``metrics``: the cross-validated estimates typed, the rest as written."""

    cross_validated: dict[str, Estimate] = Field(default_factory=dict)


class Manifest(_Part):
    """A model folder's manifest; see ``MODEL_CARD.md`` for what the values mean."""

    name: str = Field(min_length=1, max_length=LO_MAX)
    version: str = Field(min_length=1, max_length=LO_MAX)
    architecture: str = Field(min_length=1)
    architecture_kwargs: dict[str, Any]
    task: str | None = None
    input: InputSpec
    output: OutputKind = OutputKind.SCORE
    score_output: NonNegativeInt = 0
    """Which of the model's logits is the positive class's score (a score model)."""
    lesion_map: LesionMapSpec | None = None
    breast_combiner: dict[str, Any] | None = None
    class_names: tuple[str, ...] = Field(min_length=2)
    positive_class: str
    threshold: float = Field(ge=0.0, le=1.0)
    """Operating point: a score at or above it is flagged suspicious."""
    training_data: dict[str, Any]
    training: dict[str, Any] | None = None
    metrics: Metrics
    smoke_test: bool = False
    format_version: PositiveInt = FORMAT_VERSION
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: str = Field(min_length=1)
    parameters: NonNegativeInt | None = None
    """Number of weights, as export counted them."""

    @field_validator("output", mode="before")
    @classmethod
    def _legacy_output(cls, value: object) -> object:
        return OutputKind.SCORE if value == LEGACY_SCORE_OUTPUT else value

    @field_validator("name", "version")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value > FORMAT_VERSION:
            raise ValueError(f"format {value} is newer than this node reads ({FORMAT_VERSION})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.positive_class not in self.class_names:
            raise ValueError(
                f"positive_class {self.positive_class!r} is not one of {list(self.class_names)}"
            )
        if self.localises and self.lesion_map is None:
            raise ValueError(f"output {self.output.value} needs a lesion_map entry")
        if self.breast_combiner is not None:
            try:
                BreastCombiner.from_dict(self.breast_combiner)
            except ModelError as exc:
                raise ValueError(str(exc)) from exc
        return self

    @property
    def localises(self) -> bool:
        """Whether the model outputs a lesion map (then no Grad-CAM is needed)."""
        return self.output is OutputKind.SCORE_AND_LESION_MAP

    @property
    def combiner(self) -> BreastCombiner | None:
        """How a breast's score is made from its film logits (and the other breast's)."""
        data = self.breast_combiner
        return BreastCombiner.from_dict(data) if data else None

    @property
    def lesion(self) -> LesionMapSpec:
        """The lesion map's description (defaults for a score model)."""
        return self.lesion_map or LesionMapSpec()

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON values (lists, strings): what was given, no defaults added."""
        data: dict[str, Any] = json.loads(self.to_json())
        return data

    def to_json(self) -> str:
        """The text of ``manifest.json``: what was given, no defaults added."""
        data = self.model_dump(exclude_unset=True)  # NaN stays NaN, as json writes it
        if "output" in data:
            data["output"] = self.output.value
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: object, source: str = "manifest") -> Manifest:
        """Validate ``data``; ModelError naming every bad or missing field."""
        if not isinstance(data, dict):
            raise ModelError(f"{source} is not an object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ModelError(f"{source} is invalid: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    missing = [_where(e["loc"]) for e in exc.errors() if e["type"] == "missing"]
    bad = [
        f"{_where(e['loc']) or '(manifest)'}: {e['msg']} (got {_shown(e['input'])})"
        for e in exc.errors()
        if e["type"] != "missing"
    ]
    parts = ([f"lacks {missing}"] if missing else []) + bad
    return "; ".join(parts)


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_manifest(path: Path) -> Manifest:
    """Read and validate a model folder's manifest."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"no {MANIFEST} in model folder {path}")
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"unreadable manifest in {path}: {exc}") from exc
    return Manifest.from_dict(data, source=f"manifest in {path}")


def validation_warning(manifest: Manifest) -> str | None:
    """Why a model's scores should not be trusted, from its manifest; None when validated.

    A model is validated when the 95% interval of its cross-validated AUC lies above 0.5.
    """
    label = f"model {manifest.name} {manifest.version}"
    if manifest.smoke_test:
        return f"{label} is a smoke-test model; its scores mean nothing"
    auc = manifest.metrics.cross_validated.get("auc")
    if auc is None or auc.ci95 is None:
        return f"{label} has no cross-validated AUC in its manifest; its quality is unmeasured"
    low, high = auc.ci95
    if low > 0.5:
        return None
    return (
        f"{label}: cross-validated AUC {auc.value:.2f} (95% CI {low:.2f}-{high:.2f}) "
        "is not shown to be better than chance; its scores carry no diagnostic information "
        "(see its MODEL_CARD.md)"
    )
