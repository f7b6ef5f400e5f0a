"""What an analysis found, as plain values: scores per image, breast and exam, and findings.

Torch-free, so that reporting, the job record and the console read results without the model's
libraries. ``to_dict`` gives the JSON shape that ``cad-node predict --json`` prints and the
audit database stores for each job; ``from_dict`` reads it back (without the pixel arrays,
which are never stored).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

DECISION_SUPPORT: Final = "Decision support for a radiologist, not a diagnosis."
"""Said by every output of the node."""


def _field(value: Mapping[str, Any], key: str, kind: str) -> Any:
    """``value[key]`` or a ValueError naming what is malformed."""
    if not isinstance(value, Mapping) or key not in value:
        raise ValueError(f"malformed {kind} {value!r}: no {key!r}")
    return value[key]


def _number(value: Mapping[str, Any], key: str, kind: str) -> float:
    raw = _field(value, key, kind)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"malformed {kind} {value!r}: {key!r} is not a number")
    return float(raw)


def _text(value: Mapping[str, Any], key: str, kind: str) -> str:
    raw = _field(value, key, kind)
    if not isinstance(raw, str):
        raise ValueError(f"malformed {kind} {value!r}: {key!r} is not text")
    return raw


def _flag(value: Mapping[str, Any], key: str, kind: str) -> bool:
    raw = _field(value, key, kind)
    if not isinstance(raw, bool):
        raise ValueError(f"malformed {kind} {value!r}: {key!r} is not true or false")
    return raw


def _list(value: Mapping[str, Any], key: str, kind: str) -> list[Any]:
    raw = _field(value, key, kind)
    if not isinstance(raw, list):
        raise ValueError(f"malformed {kind}: {key!r} is not a list")
    return raw


@dataclass(frozen=True)
class Finding:
    """One lesion finding on its source image.

    ``x`` (column), ``y`` (row) and ``radius`` are in source pixels, with pixel centres at
    whole numbers (array indices); ``score`` is the lesion map's probability there, in [0, 1].

    Raises:
        ValueError: a value is not finite, the radius is not positive or the score is
            outside [0, 1].
    """

    x: float
    y: float
    radius: float
    score: float

    def __post_init__(self) -> None:
        values = (self.x, self.y, self.radius, self.score)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"finding has a value that is not finite: {self!r}")
        if self.radius <= 0.0:
            raise ValueError(f"finding radius {self.radius!r} is not positive")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"finding score {self.score!r} is outside [0, 1]")

    def to_dict(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y, "radius": self.radius, "score": self.score}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Finding:
        """From ``{"x", "y", "radius", "score"}``."""
        return cls(*(_number(value, key, "finding") for key in ("x", "y", "radius", "score")))


@dataclass(frozen=True)
class NotAnalysed:
    """An image of the study that the model does not analyse (another modality, a view it
    was not trained on), and why."""

    sop_instance_uid: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"sop_instance_uid": self.sop_instance_uid, "reason": self.reason}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> NotAnalysed:
        return cls(
            _text(value, "sop_instance_uid", "not-analysed record"),
            _text(value, "reason", "not-analysed record"),
        )


@dataclass(frozen=True)
class ImageFailure:
    """An image the analysis tried and failed on; ``error`` never quotes an element's value."""

    sop_instance_uid: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return {"sop_instance_uid": self.sop_instance_uid, "error": self.error}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ImageFailure:
        return cls(
            _text(value, "sop_instance_uid", "image failure"),
            _text(value, "error", "image failure"),
        )


@dataclass
class ImageResult:
    """One analysed image."""

    sop_instance_uid: str
    view: str
    score: float
    suspicious: bool
    display: npt.NDArray[np.float32] | None = field(default=None, repr=False, compare=False)
    """The source image as displayed (grey, [0, 1]), for overlays; never stored."""
    heatmap: npt.NDArray[np.float32] | None = field(default=None, repr=False, compare=False)
    """Lesion map (or Grad-CAM) on the source pixel grid, [0, 1]; never stored."""
    logit: float | None = None
    """The model's image logit (lesion models), which the breast score combines; not stored."""
    findings: list[Finding] = field(default_factory=list)
    """Local maxima of the lesion map, best first."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "view": self.view,
            "score": self.score,
            "suspicious": self.suspicious,
            "detections": [f.to_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ImageResult:
        kind = "image result"
        return cls(
            sop_instance_uid=_text(value, "sop_instance_uid", kind),
            view=_text(value, "view", kind),
            score=_number(value, "score", kind),
            suspicious=_flag(value, "suspicious", kind),
            findings=[Finding.from_dict(d) for d in _list(value, "detections", kind)],
        )


@dataclass(frozen=True)
class BreastResult:
    """Scores of one breast: its own and its views' (the mean of each view's images)."""

    laterality: str
    score: float
    suspicious: bool
    views: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "suspicious": self.suspicious, "views": self.views}

    @classmethod
    def from_dict(cls, laterality: str, value: Mapping[str, Any]) -> BreastResult:
        kind = "breast result"
        views = _field(value, "views", kind)
        if not isinstance(views, Mapping):
            raise ValueError(f"malformed {kind} {value!r}: 'views' is not a mapping")
        return cls(
            laterality,
            _number(value, "score", kind),
            _flag(value, "suspicious", kind),
            {str(v): _number(views, v, kind) for v in views},
        )


@dataclass
class StudyAnalysis:
    """Everything the node reports about one study."""

    study_instance_uid: str
    images: list[ImageResult]
    breasts: dict[str, BreastResult]
    missing_views: list[str]
    errors: list[ImageFailure]
    not_analysed: list[NotAnalysed]
    localised: bool = False
    """Whether the model localises (its images carry findings, possibly none)."""

    @property
    def exam_score(self) -> float | None:
        """The highest breast score, or None when no breast could be analysed."""
        return max((b.score for b in self.breasts.values()), default=None)

    @property
    def exam_suspicious(self) -> bool:
        return any(b.suspicious for b in self.breasts.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape scripts and the job record depend on (``cad-node predict --json``)."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "exam_score": self.exam_score,
            "exam_suspicious": self.exam_suspicious,
            "localised": self.localised,
            "breasts": {lat: b.to_dict() for lat, b in sorted(self.breasts.items())},
            "images": [i.to_dict() for i in self.images],
            "missing_views": self.missing_views,
            "not_analysed": [n.to_dict() for n in self.not_analysed],
            "errors": [e.to_dict() for e in self.errors],
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> StudyAnalysis:
        """From :meth:`to_dict`'s shape; the exam score and flag are derived again.

        A record written before ``localised`` was stored reads as not localised.

        Raises:
            ValueError: the record is malformed (the message says where).
        """
        kind = "study analysis"
        breasts = _field(value, "breasts", kind)
        if not isinstance(breasts, Mapping):
            raise ValueError(f"malformed {kind}: 'breasts' is not a mapping")
        localised = value.get("localised", False)
        if not isinstance(localised, bool):
            raise ValueError(f"malformed {kind}: 'localised' is not true or false")
        missing = _list(value, "missing_views", kind)
        if not all(isinstance(v, str) for v in missing):
            raise ValueError(f"malformed {kind}: 'missing_views' holds a value that is not text")
        return cls(
            study_instance_uid=_text(value, "study_instance_uid", kind),
            images=[ImageResult.from_dict(i) for i in _list(value, "images", kind)],
            breasts={str(lat): BreastResult.from_dict(str(lat), b) for lat, b in breasts.items()},
            missing_views=list(missing),
            errors=[ImageFailure.from_dict(e) for e in _list(value, "errors", kind)],
            not_analysed=[NotAnalysed.from_dict(n) for n in _list(value, "not_analysed", kind)],
            localised=localised,
        )
