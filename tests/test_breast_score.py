"""The breast combiner kept in a lesion model's manifest."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cad_node.breast_score import BreastCombiner
from cad_node.errors import ModelError

COMBINER = BreastCombiner(own=2.0, other=-1.0, bias=0.5, single_own=1.5, single_bias=-0.25)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_both_breasts_and_a_missing_pair() -> None:
    p = COMBINER.probability(np.array([1.0, 1.0]), np.array([0.5, np.nan]))
    assert p[0] == pytest.approx(_sigmoid(2.0 - 0.5 + 0.5))
    assert p[1] == pytest.approx(_sigmoid(1.5 - 0.25))  # no other breast: the single fit


def test_use_other_false_ignores_the_other_breast() -> None:
    alone = BreastCombiner(**{**COMBINER.to_dict(), "use_other": False})
    assert alone.probability(1.0, 5.0) == pytest.approx(_sigmoid(1.25))


def test_round_trip_and_invalid_manifest_entry() -> None:
    assert BreastCombiner.from_dict(COMBINER.to_dict()) == COMBINER
    with pytest.raises(ModelError, match="breast_combiner"):
        BreastCombiner.from_dict({"own": 1.0})
