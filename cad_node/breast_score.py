"""A breast's probability from its film logit and, optionally, the other breast's logit.

Fitted by training (``cad_node.training.lesion``) on cross-validated logits and kept in the
model's manifest (``breast_combiner``); inference reads it back. Pure numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cad_node.errors import ModelError

FloatArray = npt.NDArray[np.float64]


def _sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-x))
    return out


@dataclass(frozen=True)
class BreastCombiner:
    """``p = sigmoid(own * l + other * l_other + bias)``; without a pair (or with
    ``use_other`` false) ``p = sigmoid(single_own * l + single_bias)``."""

    own: float
    other: float
    bias: float
    single_own: float
    single_bias: float
    use_other: bool = True

    def probability(self, own: npt.ArrayLike, other: npt.ArrayLike | None) -> FloatArray:
        """Calibrated probability; ``other`` may hold NaN where the other breast is missing."""
        l_own = np.asarray(own, dtype=np.float64)
        single = _sigmoid(self.single_own * l_own + self.single_bias)
        if other is None or not self.use_other:
            return single
        l_other = np.asarray(other, dtype=np.float64)
        both = _sigmoid(self.own * l_own + self.other * np.nan_to_num(l_other) + self.bias)
        out: FloatArray = np.where(np.isnan(l_other), single, both)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BreastCombiner:
        """From a manifest's ``breast_combiner``; ModelError when a coefficient is missing."""
        try:
            return cls(
                own=float(data["own"]),
                other=float(data["other"]),
                bias=float(data["bias"]),
                single_own=float(data["single_own"]),
                single_bias=float(data["single_bias"]),
                use_other=bool(data.get("use_other", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"invalid breast_combiner in the manifest: {exc}") from exc
