"""Knob constraints (org/constraint.py): the expression language and what it refuses, the program's
checks, knob mode's offered moves, sampler trials, the vet's knobs gate, and the quickstart's
batch shape (a move the target refused before now trains)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from org.constraint import Constraint, ConstraintError, broken
from org.errors import InputError
from org.program import load_program
from org.sampler import SamplerProposer, space
from org.vet import VetInput, vet
from org.workspace import Workspace
from tests.tiny import TRAIN, make_repo

REPO = Path(__file__).resolve().parents[1]
LIMIT = '["DEPTH * LR <= 0.05"]'  # the baseline (4 * 0.01) meets it; LR x2 does not


def test_constraints_evaluate_arithmetic_comparisons_and_logic():
    c = Constraint.parse("TOTAL % (min(DEV, TOTAL // 256) * 256) == 0 and not FLAG")
    assert c.names == {"TOTAL", "DEV", "FLAG"}
    assert c.holds({"TOTAL": 4096, "DEV": 16, "FLAG": False})
    assert c.holds({"TOTAL": 1024, "DEV": 16, "FLAG": False})  # fewer rows than DEV: whole rows
    assert not c.holds({"TOTAL": 1000, "DEV": 16, "FLAG": False})
    assert not c.holds({"TOTAL": 4096, "DEV": 16, "FLAG": True})
    assert not c.holds({"TOTAL": 128, "DEV": 16, "FLAG": False})  # zero rows: a division by zero fails it
    assert Constraint.parse("1 < A <= 3").holds({"A": 3}) and not Constraint.parse("1 < A <= 3").holds({"A": 1})
    assert not Constraint.parse("A > 1").holds({"A": "wide"})  # a string knob is no number
    # a name the point lacks (an edit turned the knob into code) is not checked here
    assert broken([c], {"TOTAL": 1000}) == []


@pytest.mark.parametrize("text", [
    "__import__('os').system('true') == 0",
    "A.__class__ == 1",  # attribute access
    "(1).__class__.__bases__ == 0",
    "[x for x in A] == 1",  # a comprehension
    "(B := 1) == A",  # an assignment expression
    "lambda: A",
    "A['k'] == 1",  # a subscript
    "f'{A}' == '1'",  # an f-string, a string constant
    "eval('A') == 1",
    "getattr(A, 'real') == 1",
    "min.__call__(A, 1) == 1",
    "max(A, key=abs) == 1",  # keyword arguments
    "min() == A",
    "A == 1; B",
    "1 == 1",  # reads no knob
    "import os",
])
def test_anything_but_the_expression_language_is_refused_at_parse(text):
    with pytest.raises(ConstraintError):
        Constraint.parse(text)


@pytest.mark.parametrize("text", ["A ** (10 ** 9) > 1", "((A ** 128) ** 128) ** 128 > 1",
                                  "(((A ** 128) ** 128) ** 128) ** 128 > 1"])  # fmt: skip
def test_a_huge_power_is_false_at_once_not_computed(text):
    start = time.monotonic()
    assert not Constraint.parse(text).holds({"A": 9})
    assert time.monotonic() - start < 1
    assert Constraint.parse("A ** 3 == 729").holds({"A": 9})


@pytest.mark.parametrize("terms", [60, 1500, 3000, 100_000])
def test_deep_nesting_is_a_parse_error_not_a_crash(terms):
    with pytest.raises(ConstraintError, match="nested"):
        Constraint.parse(" + ".join(["A"] * terms) + " > 1")


def test_the_starting_knobs_must_meet_the_constraints(tmp_path):
    """The program's `knobs` are the baseline: they must be a point of the space (bad inputs of
    every other kind: tests/test_bad_input.py)."""
    program = make_repo(tmp_path / "repo", knob_constraints='["DEPTH < 5"]', knobs="{DEPTH: 5}")
    with pytest.raises(InputError) as err:
        load_program(program)
    assert err.value.field == "knob_constraints" and "DEPTH=5" in err.value.message
    assert load_program(make_repo(tmp_path / "ok", knob_constraints='["DEPTH < 5"]', knobs="{DEPTH: 3}"))


def test_knob_mode_never_offers_a_move_that_breaks_a_constraint(tmp_path):
    prog = load_program(make_repo(tmp_path / "repo", knob_constraints=LIMIT))
    knobs = {k.name: k for k in prog.search_space(TRAIN.format(sleep=0.0))}
    assert "x2" not in knobs["LR"].moves and "x1.5" not in knobs["LR"].moves  # 0.08, 0.06 per block
    assert {"x0.5", "x0.67"} <= set(knobs["LR"].moves)
    assert "+1" in knobs["DEPTH"].moves and "x2" not in knobs["DEPTH"].moves  # 5 * 0.01 meets it; 8 does not
    free = {k.name: k for k in load_program(make_repo(tmp_path / "free")).search_space(TRAIN.format(sleep=0.0))}
    assert "x2" in free["LR"].moves  # the same file without the constraint


@pytest.mark.parametrize("sampler", ["optuna/random", "optuna/tpe", "optuna/cmaes"])
def test_a_sampler_never_proposes_a_point_that_breaks_a_constraint(tmp_path, sampler):
    prog = load_program(make_repo(tmp_path / "repo", knob_constraints=LIMIT, fixed_knobs="[SLEEP_S]"))
    source = TRAIN.format(sleep=0.0)
    assert {d.param for d in space(prog, source)} == {"LR", "DEPTH", "USE_GATE"}
    proposer = SamplerProposer(sampler, tmp_path, "s", prog, source, seed=3)
    for n in range(1, 25):
        s = proposer.suggest(n, 0, source)
        assert s.values["DEPTH"] * s.values["LR"] <= 0.05, s.description
        proposer.study.tell(s.trial, s.values["LR"])  # a result, so TPE and CMA-ES model the space
    trials = proposer.study.get_trials()
    infeasible = [t for t in trials if t.user_attrs.get("infeasible")]
    assert infeasible and all(t.params["DEPTH"] * t.params["LR"] > 0.05 for t in infeasible)  # refused, no run
    # told worse than every result so far (FAIL before any), so a model-based sampler moves away
    for t in infeasible:
        before = [u.value for u in trials if u.number < t.number and u.state == TrialState.COMPLETE
                  and not u.user_attrs.get("infeasible")]  # fmt: skip
        assert (t.state == TrialState.FAIL) if not before else (t.value > max(before))
    assert len(trials) < 24 * 10  # rejection sampling stays cheap


def test_a_sampler_moves_knobs_that_can_only_move_together(tmp_path):
    """DEPTH may leave 4 only with USE_GATE on: no single move of DEPTH is offered from the
    baseline, but the sampler's space keeps DEPTH and its trials move both."""
    prog = load_program(make_repo(tmp_path / "repo", knob_constraints='["DEPTH == 4 or USE_GATE"]',
                                  fixed_knobs="[SLEEP_S]"))  # fmt: skip
    source = TRAIN.format(sleep=0.0)
    assert {k.name: k.moves for k in prog.search_space(source)}["DEPTH"] == ()
    assert {d.param for d in space(prog, source)} == {"LR", "DEPTH", "USE_GATE"}
    proposer = SamplerProposer("optuna/random", tmp_path, "s", prog, source, seed=1)
    moved = []
    for n in range(1, 15):
        s = proposer.suggest(n, 0, source)
        assert s.values["DEPTH"] == 4 or s.values["USE_GATE"], s.description
        moved.append(s.values["DEPTH"] != 4)
    assert any(moved)


def test_a_best_that_breaks_a_constraint_is_judged_alike_everywhere(tmp_path):
    """A resume after the program's constraints changed can leave the best outside them: that
    constraint then binds no change from it, for knob mode, the gate and the samplers alike."""
    program = load_program(make_repo(tmp_path / "repo", knob_constraints='["LR < 0.015"]', fixed_knobs="[SLEEP_S]"))
    ws = Workspace(program.repo)
    ws.write("target/train.py", TRAIN.format(sleep=0.0).replace("LR = 0.01  #", "LR = 0.02  #"))
    best = ws.commit("LR up (kept before the constraint was written)", ["target/train.py"])
    source = ws.read("target/train.py")
    assert "x2" in {k.name: k.moves for k in program.search_space(source)}["LR"]
    ws.write("target/train.py", source.replace("DEPTH = 4  #", "DEPTH = 5  #"))
    ws.commit("DEPTH up", ["target/train.py"])
    assert vet(VetInput(ws, program, best, {}, "DEPTH up", None), smoke=False).ok
    proposer = SamplerProposer("optuna/random", tmp_path, "s", program, source, seed=1)
    values = [proposer.suggest(n, 0, source).values["LR"] for n in range(1, 11)]
    assert not any(t.user_attrs.get("infeasible") for t in proposer.study.get_trials())  # nothing refused
    assert any(v >= 0.015 for v in values)  # the constraint the best breaks binds no trial


def test_the_knobs_gate_refuses_a_broken_shape_before_the_smoke_run(tmp_path):
    program = load_program(make_repo(tmp_path / "repo", knob_constraints=LIMIT))
    ws = Workspace(program.repo)
    best = ws.head()
    # an edit (not a knob move) that breaks it, in another spelling of the same value
    ws.write("target/train.py", TRAIN.format(sleep=0.0).replace("LR = 0.01  #", "LR = 2e-2  #"))
    ws.commit("LR up", ["target/train.py"])
    verdict = vet(VetInput(ws, program, best, {}, "LR up", None), smoke=True)
    assert (verdict.ok, verdict.gate) == (False, "knobs")
    assert "'DEPTH * LR <= 0.05' fails at DEPTH=4, LR=0.02" in verdict.reason
    assert [r.gate for r in verdict.records] == ["scope", "syntax", "rules", "knobs"]  # no smoke run spent
    # a change that meets it passes the gate; a program without constraints has no such gate
    ws.write("target/train.py", TRAIN.format(sleep=0.0).replace("LR = 0.01  #", "LR = 0.0125  #"))
    ws.commit("LR up a little", ["target/train.py"])
    assert vet(VetInput(ws, program, best, {}, "LR", None), smoke=False).ok
    plain = load_program(make_repo(tmp_path / "plain"))
    ws = Workspace(plain.repo)
    start = ws.head()
    ws.write("target/train.py", TRAIN.format(sleep=0.0).replace("LR = 0.01  #", "LR = 2e-2  #"))
    ws.commit("LR up", ["target/train.py"])
    verdict = vet(VetInput(ws, plain, start, {}, "LR up", None), smoke=False)
    assert verdict.ok and [r.gate for r in verdict.records] == ["scope", "syntax", "rules"]


def test_the_quickstart_space_has_no_shape_the_target_refuses():
    program = load_program(REPO / "programs" / "quickstart.md")
    source = (REPO / "trainer" / "train.py").read_text()
    knobs = {k.name: k for k in program.search_space(source)}
    assert set(knobs["TOTAL_BATCH_TOKENS"].moves) == {"x2", "x0.5"}  # refused by the target before
    assert knobs["DEVICE_BATCH_SIZE"].moves == ()  # a speed knob under a FLOP budget
    point = {k.name: k.value for k in program.knobs_of(source)}
    for total in (2**8, 2**10, 2**12, 2**14, 2**16):
        assert not broken(program.constraints, point | {"TOTAL_BATCH_TOKENS": total})
    assert broken(program.constraints, point | {"TOTAL_BATCH_TOKENS": 1000})
    assert broken(program.constraints, point | {"TOTAL_BATCH_TOKENS": 128})
    # the comparison's other smoke crashes: DEPTH -1 from 1, a model of no layers
    shallow = {k.name: k for k in program.search_space(source.replace("DEPTH = 4  #", "DEPTH = 1  #"))}
    assert "-1" not in shallow["DEPTH"].moves and "+1" in shallow["DEPTH"].moves
