"""The memory bank read into frames gives the analyzer's output of the hand-written readers, field for field.

tests/data/bank_golden.json.gz was written by the readers before pandas (tests/bank_golden.py,
run on main at 5029a87) from the planted 50k bank: every malformed record of the
malformed-input tests at fixed lines, an unterminated last line, filters by date and version,
and the first 300 export candidates.

What the readers give is compared field for field. Three things changed by design since, and are
tested where they are decided: each class's reviewed recall counts matched detections only (issue
26: the old ``detections`` / ``ratio`` are now ``calls`` / ``call_ratio``, and ``detections`` is the
matched count; tests/test_reviewed_recall.py), a class carries ``below_spec`` (issue 24, None
without a production evaluation; tests/test_line_spec.py), and the priority scores follow from
both (tests/test_priorities.py), so the candidates' order and reasons, which quote the scores, are
not compared with the old code here (tests/test_bank_aggregate.py keeps the export's candidates
equal to the whole bank's).
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
    for key in golden.keys() - {"classes", "priorities", "candidates"}:
        assert got[key] == golden[key], key
    assert got["classes"].keys() == golden["classes"].keys()
    for name, old in golden["classes"].items():
        new = dict(got["classes"][name])
        assert new.pop("below_spec") is None, name          # no production evaluation in this bank
        new_prev, old_prev = dict(new.pop("prevalence")), dict(old["prevalence"])
        assert {k: v for k, v in new.items()} == {k: v for k, v in old.items() if k != "prevalence"}, name
        # every call the old code counted is still counted, as a call; recall now counts matches only
        assert new_prev.pop("calls") == old_prev.pop("detections"), name
        assert new_prev.pop("call_ratio") == old_prev.pop("ratio"), name
        assert new_prev.pop("matched") is True
        assert new_prev.pop("detections") <= golden["classes"][name]["prevalence"]["detections"], name
        new_prev.pop("ratio")
        assert new_prev == old_prev, name
    assert [p["class"] for p in got["priorities"]] and \
        {p["class"] for p in got["priorities"]} == {p["class"] for p in golden["priorities"]}
    assert len(got["candidates"]) == len(golden["candidates"])
