"""Result values: validated findings, and the JSON shape of an analysis read back."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from cad_node.results import (
    BreastResult,
    Finding,
    ImageFailure,
    ImageResult,
    NotAnalysed,
    StudyAnalysis,
)


def _analysis() -> StudyAnalysis:
    grey = np.zeros((4, 3), dtype=np.float32)
    return StudyAnalysis(
        study_instance_uid="1.2.3",
        images=[
            ImageResult(
                "1.2.3.1",
                "L-CC",
                0.75,
                True,
                display=grey,
                heatmap=grey,
                logit=1.1,
                findings=[Finding(10.5, 20.0, 6.25, 0.875), Finding(1.0, 2.0, 0.5, 0.0)],
            ),
            ImageResult("1.2.3.2", "L-MLO", 0.25, False),
            ImageResult("1.2.3.3", "R-CC", 0.125, False),
        ],
        breasts={
            "R": BreastResult("R", 0.125, False, {"R-CC": 0.125}),
            "L": BreastResult("L", 0.5, True, {"L-CC": 0.75, "L-MLO": 0.25}),
        },
        missing_views=["R-MLO"],
        errors=[ImageFailure("1.2.3.4", "pixel data cannot be decoded")],
        not_analysed=[NotAnalysed("1.2.3.5", "not a mammogram (modality CR)")],
        localised=True,
    )


STORED: dict[str, Any] = {
    "study_instance_uid": "1.2.3",
    "exam_score": 0.5,
    "exam_suspicious": True,
    "localised": True,
    "breasts": {
        "L": {"score": 0.5, "suspicious": True, "views": {"L-CC": 0.75, "L-MLO": 0.25}},
        "R": {"score": 0.125, "suspicious": False, "views": {"R-CC": 0.125}},
    },
    "images": [
        {
            "sop_instance_uid": "1.2.3.1",
            "view": "L-CC",
            "score": 0.75,
            "suspicious": True,
            "detections": [
                {"x": 10.5, "y": 20.0, "radius": 6.25, "score": 0.875},
                {"x": 1.0, "y": 2.0, "radius": 0.5, "score": 0.0},
            ],
        },
        {
            "sop_instance_uid": "1.2.3.2",
            "view": "L-MLO",
            "score": 0.25,
            "suspicious": False,
            "detections": [],
        },
        {
            "sop_instance_uid": "1.2.3.3",
            "view": "R-CC",
            "score": 0.125,
            "suspicious": False,
            "detections": [],
        },
    ],
    "missing_views": ["R-MLO"],
    "not_analysed": [{"sop_instance_uid": "1.2.3.5", "reason": "not a mammogram (modality CR)"}],
    "errors": [{"sop_instance_uid": "1.2.3.4", "error": "pixel data cannot be decoded"}],
}
"""The shape ``cad-node predict --json`` prints and the job record stores, key for key."""


def test_to_dict_keeps_the_stored_shape() -> None:
    assert _analysis().to_dict() == STORED
    assert list(_analysis().to_dict()) == list(STORED)  # the key order of the printed JSON


def test_a_stored_record_reads_back_as_the_same_values() -> None:
    back = StudyAnalysis.from_dict(json.loads(json.dumps(STORED)))
    original = _analysis()
    original.images[0].logit = None  # the logit and the pixel arrays are never stored
    assert back == original
    assert back.to_dict() == STORED
    assert back.images[0].display is None and back.images[0].heatmap is None
    assert back.exam_score == 0.5 and back.exam_suspicious


def test_a_record_without_localised_reads_as_not_localised() -> None:
    older = {k: v for k, v in STORED.items() if k != "localised"}
    assert not StudyAnalysis.from_dict(older).localised


def test_nothing_analysed_round_trips() -> None:
    empty = StudyAnalysis("1.2.3", [], {}, ["L-CC"], [ImageFailure("1.2.3.9", "bad")], [])
    record = empty.to_dict()
    assert record["exam_score"] is None and not record["exam_suspicious"]
    assert StudyAnalysis.from_dict(record) == empty


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((1.0, 2.0, 0.0, 0.5), "radius 0.0 is not positive"),
        ((1.0, 2.0, -3.0, 0.5), "radius -3.0 is not positive"),
        ((1.0, 2.0, 3.0, 1.5), "score 1.5 is outside"),
        ((1.0, 2.0, 3.0, -0.1), "score -0.1 is outside"),
        ((math.nan, 2.0, 3.0, 0.5), "not finite"),
        ((1.0, math.inf, 3.0, 0.5), "not finite"),
    ],
)
def test_invalid_findings_are_refused(values: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Finding(*values)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"x": 10.0, "y": 10.0, "score": 0.5}, "no 'radius'"),
        ({"x": "10", "y": 10.0, "radius": 4.0, "score": 0.5}, "'x' is not a number"),
        ({"x": True, "y": 10.0, "radius": 4.0, "score": 0.5}, "'x' is not a number"),
        ({"x": 10.0, "y": 10.0, "radius": 4.0, "score": 1.5}, "outside"),
        ([10.0, 10.0, 4.0, 0.5], "no 'x'"),
    ],
)
def test_malformed_stored_findings_are_refused(record: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Finding.from_dict(record)


def _broken(path: list[str | int], value: Any) -> dict[str, Any]:
    record: Any = json.loads(json.dumps(STORED))
    target = record
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return dict(record)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_broken(["images"], KeyError), "no 'images'"),
        (_broken(["images"], {}), "'images' is not a list"),
        (_broken(["images", 0, "suspicious"], "yes"), "'suspicious' is not true or false"),
        (_broken(["images", 1, "view"], 3), "'view' is not text"),
        (_broken(["breasts", "L", "views"], [0.5]), "'views' is not a mapping"),
        (_broken(["breasts", "L", "views", "L-CC"], None), "'L-CC' is not a number"),
        (_broken(["errors", 0, "error"], KeyError), "no 'error'"),
        (_broken(["not_analysed", 0], "CR"), "no 'sop_instance_uid'"),
        (_broken(["missing_views"], [1]), "'missing_views' holds a value that is not text"),
        (_broken(["localised"], "no"), "'localised' is not true or false"),
    ],
)
def test_malformed_stored_analyses_are_refused(record: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StudyAnalysis.from_dict(record)
