"""The memory bank read into frames gives the analyzer's output of the hand-written readers, field for field.

tests/data/bank_golden.json.gz was written by the readers before pandas (tests/bank_golden.py,
run on main at 5029a87) from the planted 50k bank: every malformed record of the
malformed-input tests at fixed lines, an unterminated last line, filters by date and version,
and the first 300 export candidates.
"""
from __future__ import annotations

import gzip
import json

import pytest

from bank_golden import CASES, GOLDEN, compute, write_planted


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return compute(write_planted(tmp_path_factory.mktemp("golden") / "planted.jsonl"))


@pytest.mark.parametrize("case", list(CASES))
def test_frames_give_the_old_output_field_for_field(planted, case):
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as fh:
        golden = json.load(fh)[case]
    got = planted[case]
    assert got.keys() == golden.keys()
    for key in golden:
        assert got[key] == golden[key], key
