"""Every standard code the result objects use exists in PS3.16 with the meaning we write."""

from __future__ import annotations

import pytest
from pydicom.sr._concepts_dict import concepts
from pydicom.sr.coding import Code

from cad_node.reporting import codes


def _normalise(meaning: str) -> str:
    return meaning.replace("\u200b", "").strip().lower()


def _ps316_meanings(code: Code) -> list[str]:
    scheme = concepts.get(code.scheme_designator, {})
    return [
        _normalise(entries[code.value][0]) for entries in scheme.values() if code.value in entries
    ]


@pytest.mark.parametrize(
    "code", codes.STANDARD_CODES, ids=lambda c: f"{c.scheme_designator}-{c.value}"
)
def test_standard_code_exists_with_its_meaning(code: Code) -> None:
    meanings = _ps316_meanings(code)
    assert meanings, f"{code} is not in PS3.16"
    ours = _normalise(code.meaning)
    # SNOMED meanings in PS3.16 may carry a semantic tag, e.g. "Source (attribute)"
    assert any(m == ours or m.startswith(ours + " (") for m in meanings), (code, meanings)


def test_only_the_flag_is_private() -> None:
    private = [
        v for v in vars(codes).values() if isinstance(v, Code) and v not in codes.STANDARD_CODES
    ]
    assert private == [codes.SUSPICIOUS]
    assert codes.SUSPICIOUS.scheme_designator == codes.PRIVATE_SCHEME == "99CADNODE"
    item = codes.private_scheme_identification()
    assert item.CodingSchemeDesignator == "99CADNODE"


def test_views_are_those_the_assembly_recognises() -> None:
    assert {c.value for c in codes.VIEW_CODE.values()} == {"399162004", "399368009"}
