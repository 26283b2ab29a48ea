"""The planted-bug suite (evals/bugs/): every bug applies to today's trainer/train.py exactly once,
still parses, and is of the kind it says (a knob bug moves one knob, a code bug none)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from evals.bugs import Bug, load_bugs
from org.proposal import parse_knobs

TRAIN = (Path(__file__).resolve().parents[1] / "trainer" / "train.py").read_text()
BUGS = load_bugs()


def test_the_suite_has_at_least_six_bugs_of_both_kinds():
    assert len(BUGS) >= 6 and {b.kind for b in BUGS} == {"code", "knob"}
    assert len({b.name for b in BUGS}) == len(BUGS)


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name)
def test_each_bug_plants_once_and_is_what_it_says(bug: Bug):
    planted = bug.plant(TRAIN)
    ast.parse(planted)
    assert bug.present(planted) and not bug.present(TRAIN)
    before = {k.name: k.value for k in parse_knobs(TRAIN)}
    after = {k.name: k.value for k in parse_knobs(planted)}
    moved = {k for k in before if before[k] != after.get(k)}
    assert len(moved) == (1 if bug.kind == "knob" else 0), moved


def test_a_bug_whose_text_is_gone_says_so():
    bug = BUGS[0]
    with pytest.raises(ValueError, match=f"evals/bugs/{bug.name}.md: search: found 0 times"):
        bug.plant(TRAIN.replace(bug.search, "# rewritten\n"))
