"""Pipelining (org/ahead.py): while a run trains, the next proposals are made and vetted; a keep
rebases them onto the new best (vetted again) or drops those that no longer apply. Scripted
roles, the tiny real target (each run sleeps, as training would), real git, ledger and memory."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from org import campaign as c
from org.ledger import Ledger
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"


def _events(tag: str) -> list[dict]:
    return [json.loads(line) for line in (c.campaign_dir(tag) / "events.jsonl").read_text().splitlines()]


def _edit(search: str, replace: str, why: str = "should help") -> dict:
    return {"hypothesis": why, "edits": [{"path": "train.py", "search": search, "replace": replace}]}


def test_the_next_proposal_is_made_and_vetted_while_a_run_trains_and_rebased_after_a_keep(tmp_path):
    program = make_repo(tmp_path / "repo", sleep=2.0, pipeline_depth="1")
    client = ScriptedClient(script={"proposer": [knob("LR", "x2"), knob("DEPTH", "+1"), knob("LR", "x2")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})  # fmt: skip
    state = c.start(program, ROLES / "tiered", tag="pipe", max_experiments=3, models=client)
    assert state["stopped"] == "reached max_experiments=3"
    ledger = Ledger(c.campaign_dir("pipe") / "ledger.db")
    rows = ledger.experiments()
    # exp 2 was made on the baseline while exp 1 ran; exp 1's keep rebased it (DEPTH moves from the
    # new best's value) and it was vetted again; exp 3 was made on exp 1 while exp 2 ran, and used
    # as made (exp 2 was discarded: the best had not moved)
    assert [(r["status"], r["description"]) for r in rows[1:]] == [
        ("keep", "LR x2: 0.01 -> 0.02"), ("discard", "DEPTH +1: 4 -> 5"), ("keep", "LR x2: 0.02 -> 0.04")]
    assert rows[2]["parent"] == rows[1]["commit"] and rows[3]["parent"] == rows[1]["commit"]
    events = _events("pipe")
    ahead = [e for e in events if e["event"] == "ahead"]
    assert [e["exp"] for e in ahead] == [2, 3]
    assert [e["exp"] for e in events if e["event"] == "ahead_rebased"] == [2]
    assert [e["exp"] for e in events if e["event"] == "vet" and e.get("reason") == "vetted ahead"] == [3]
    # the proposals after the first were asked while a run trained, and told what was in flight
    done = {e["exp"]: e["timestamp"] for e in events if e["event"] == "run_done"}
    assert ahead[0]["timestamp"] < done[1] and ahead[1]["timestamp"] < done[2]
    proposer = [s for s in client.sent if s["role"] == "proposer"]
    assert "in flight, not judged yet: experiment 1: LR x2" in "\n".join(m["content"] for m in proposer[1]["messages"])
    # reviews: exp 1 in line, exp 2 ahead and again after its rebase, exp 3 ahead only
    assert [s["role"] for s in client.sent].count("reviewer") == 4
    # the branch stays linear: base, exp 1, exp 3
    log = subprocess.run(["git", "rev-list", "--first-parent", "HEAD"], cwd=c.campaign_dir("pipe") / "worktree",
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert log[:2] == [rows[3]["commit"], rows[1]["commit"]]
    assert ledger.failures() == []


def test_a_prepared_edit_that_no_longer_applies_after_a_keep_is_dropped_not_held_against_the_proposer(tmp_path):
    program = make_repo(tmp_path / "repo", sleep=2.0, pipeline_depth="1")
    client = ScriptedClient(script={"proposer": [
        _edit("LR = 0.01  # learning rate", "LR = 0.02  # learning rate", "a larger step trains faster"),  # 1: keep
        _edit("LR = 0.01  # learning rate", "LR = 0.005  # learning rate", "a smaller step is stabler"),  # made ahead
        _edit("DEPTH = 4  # blocks", "DEPTH = 5  # blocks", "one more block adds capacity"),  # 2, asked anew
    ]})  # fmt: skip
    state = c.start(program, ROLES / "solo", tag="drop", max_experiments=2, models=client)
    ledger = Ledger(c.campaign_dir("drop") / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows[1:]] == ["keep", "discard"] and "block" in rows[2]["description"]
    failures = ledger.failures()
    assert [f["stage"] for f in failures] == ["rebase"] and "no longer applies" in failures[0]["reason"]
    assert state["fails_in_row"] == 0 and not any("rebase" in line for line in state["feedback"])
    assert [e["exp"] for e in _events("drop") if e["event"] == "ahead_dropped"] == [2]


def test_the_move_in_flight_is_not_offered_ahead_and_a_repeat_is_refused(tmp_path):
    """Knob mode: the move in flight is not in the schema the pipeline's proposer gets (a scripted
    proposer that insists on it gives no valid answer). Edit mode: the same files as the run in
    flight are a duplicate at vet."""
    program = make_repo(tmp_path / "repo", sleep=2.0, pipeline_depth="1")
    client = ScriptedClient(script={"proposer": [knob("LR", "x2"), knob("LR", "x2"), knob("DEPTH", "+1")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})  # fmt: skip
    c.start(program, ROLES / "tiered", tag="twice", max_experiments=2, models=client)
    calls = [s for s in client.sent if s["role"] == "proposer"]
    assert "x2" in calls[0]["schema"].knob_moves["LR"] and "x2" not in calls[1]["schema"].knob_moves["LR"]
    ledger = Ledger(c.campaign_dir("twice") / "ledger.db")
    assert [f["stage"] for f in ledger.failures()] == ["propose"]
    rows = ledger.experiments()
    assert [r["description"] for r in rows[1:]] == ["LR x2: 0.01 -> 0.02", "DEPTH +1: 4 -> 5"]

    gate = {"hypothesis": "gating helps", "edits": [
        {"path": "train.py", "search": "USE_GATE = False", "replace": "USE_GATE = True"}]}
    deeper = {"hypothesis": "capacity", "edits": [{"path": "train.py", "search": "DEPTH = 4", "replace": "DEPTH = 5"}]}
    program = make_repo(tmp_path / "repo2", sleep=2.0, pipeline_depth="1")
    client = ScriptedClient(script={"proposer": [gate, gate, deeper]})
    c.start(program, ROLES / "solo", tag="twice-edit", max_experiments=2, models=client)
    failures = Ledger(c.campaign_dir("twice-edit") / "ledger.db").failures()
    assert [f["stage"] for f in failures] == ["vet:duplicate"]
    assert "repeats experiment 1, in flight" in failures[0]["reason"]


def test_a_sampler_pipelines_without_failing_its_own_trials(tmp_path):
    """Trials asked ahead are pending, not abandoned: the study is told each one's result."""
    from optuna.trial import TrialState

    program = make_repo(tmp_path / "repo", sleep=1.0, pipeline_depth="2",
                        knob_ranges="{LR: [0.001, 0.1], DEPTH: [3, 6]}", fixed_knobs="[SLEEP_S]")  # fmt: skip
    org = tmp_path / "org"
    shutil.copytree(ROLES / "random", org)
    state = c.start(program, org, tag="rs", max_experiments=4, models=ScriptedClient())
    assert state["stopped"] == "reached max_experiments=4"
    rows = Ledger(c.campaign_dir("rs") / "ledger.db").experiments()
    assert len(rows) == 5 and all(r["status"] in ("keep", "discard", "crash") for r in rows[1:])
    # no director: the first is made while the baseline trains (its 1 s run ends during it)
    kinds = [(e["event"], e.get("exp")) for e in _events("rs") if e["event"] in ("ahead", "run_done")]
    assert kinds[:2] == [("ahead", 1), ("run_done", 0)]
    assert [e["exp"] for e in _events("rs") if e["event"] == "ahead"][:2] == [1, 2]
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(next(c.campaign_dir("rs").glob("*.journal")))))  # fmt: skip
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    ran = [t for t in study.get_trials() if t.user_attrs.get("exp", 0) > 0 and not t.user_attrs.get("repeat")]
    # one trial per experiment, none abandoned; the study hears a result at the next proposal (the
    # last ones when the campaign is resumed)
    assert sorted(t.user_attrs["exp"] for t in ran) == [1, 2, 3, 4]
    assert not [t for t in ran if t.state == TrialState.FAIL]
    assert {t.user_attrs["exp"] for t in ran if t.state == TrialState.COMPLETE} >= {1, 2}


NOISY = {"env": "{TINY_NOISE: '0.004'}", "noise": "{seed_env: TINY_SEED, baseline_runs: 3, max_replicates: 3}"}


def test_two_slots_run_replicates_side_by_side_and_first_runs_ahead(tmp_path, monkeypatch):
    """Two CPU slots (a core each): the baseline's replicates run two at a time, and while an
    experiment runs, the next proposal's first run goes to the other slot and is used as its first
    run when it comes; the verdicts are the ones a single slot gives (same seeds, same runs)."""
    program = make_repo(tmp_path / "repo", sleep=2.0, executor="{slots: 2}", **NOISY)
    moves = [knob("DEPTH", "+1"), knob("DEPTH", "-1"), knob("LR", "x2")]
    client = ScriptedClient(script={"proposer": moves}, default={"director": DIRECTIVE, "reviewer": APPROVE})
    state = c.start(program, ROLES / "tiered", tag="slots", max_experiments=3, models=client)
    assert state["stopped"] == "reached max_experiments=3"
    ledger = Ledger(c.campaign_dir("slots") / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows] == ["keep", "discard", "discard", "keep"]
    assert [r["seed"] for r in ledger.runs(0)] == [0, 1, 2]
    events = _events("slots")
    used = [e["exp"] for e in events if e["event"] == "ahead_run_used"]
    assert used and set(used) <= {2, 3}  # first runs made on the other slot, used as the experiments' own
    for n in used:
        first = ledger.runs(n)[0]
        assert first["commit"] == rows[n]["commit"] and Path(first["log"]).name == f"{n:04d}.log"
        assert Path(first["log"]).is_file()
    # the baseline's first two runs ran side by side: recorded together, before its first verdict
    kinds = [(e["event"], e.get("replicate")) for e in events if e.get("exp") == 0 and e["event"] in ("run_done", "judge")]
    assert kinds[:3] == [("run_done", 0), ("run_done", 1), ("judge", None)]
    # the same campaign on one slot (a memory of its own) gives the same verdicts and metrics
    monkeypatch.setenv("NIGHTLAB_HOME", str(tmp_path / "home-one"))
    single = make_repo(tmp_path / "one", sleep=2.0, **NOISY)
    client1 = ScriptedClient(script={"proposer": list(moves)}, default={"director": DIRECTIVE, "reviewer": APPROVE})
    c.start(single, ROLES / "tiered", tag="one", max_experiments=3, models=client1)
    one = Ledger(c.campaign_dir("one") / "ledger.db").experiments()
    assert not [e for e in _events("one") if e["event"].startswith("ahead")]
    assert [(r["status"], r["metric"]) for r in one] == [(r["status"], r["metric"]) for r in rows]


def test_too_many_slots_for_the_cores_or_gpus_exits_2_naming_the_field(tmp_path):
    import os

    from org.errors import InputError
    from org.program import load_program
    from org.slots import plan
    from org.workspace import Workspace

    cores = len(os.sched_getaffinity(0))
    program = load_program(make_repo(tmp_path / "repo", executor=f"{{slots: {cores + 1}}}", env="{CUDA_VISIBLE_DEVICES: ''}"))
    try:
        plan(program, tmp_path / "c", Workspace(tmp_path / "repo"))
    except InputError as e:
        assert "executor.slots" in str(e)
    else:
        raise AssertionError("planned more CPU slots than cores")


def test_a_keep_rebases_what_is_ready_while_the_next_run_trains_and_its_moves_stay_in_flight(tmp_path):
    """Depth 2: B1 (DEPTH +1) and B2 (DEPTH -1) are made on the baseline while exp 1 (LR x2) runs;
    exp 1 is kept, B1 is rebased in line and runs as exp 2, and while it trains B2 is rebased onto
    the new best and vetted again there: it runs as made when its turn comes. Its move is in
    flight from then on, so C (DEPTH -1 again) is not offered: the scripted proposer that insists
    on it gives no valid answer, and the next answer is made instead."""
    # no smoke gate (the tiny target's smoke run would sleep as long as its run): both are made in time
    program = make_repo(tmp_path / "repo", sleep=3.0, pipeline_depth="2", smoke_timeout_s="null")
    moves = [knob("LR", "x2"), knob("DEPTH", "+1"), knob("DEPTH", "-1"), knob("DEPTH", "-1"), knob("USE_GATE", "toggle")]
    client = ScriptedClient(script={"proposer": moves}, default={"director": DIRECTIVE, "reviewer": APPROVE})
    c.start(program, ROLES / "tiered", tag="rebase-twice", max_experiments=4, models=client)
    ledger = Ledger(c.campaign_dir("rebase-twice") / "ledger.db")
    failures = ledger.failures()
    assert [f["stage"] for f in failures] == ["propose"], failures
    assert "does not fit KnobProposal" in failures[0]["reason"]
    rows = ledger.experiments()
    assert [r["description"] for r in rows[1:]] == ["LR x2: 0.01 -> 0.02", "DEPTH +1: 4 -> 5", "DEPTH -1: 4 -> 3",
                                                    "USE_GATE toggle: False -> True"]  # fmt: skip
    assert all(r["parent"] == rows[1]["commit"] for r in rows[2:])
    assert len({r["commit"] for r in rows}) == len(rows)  # no files ran twice
    events = _events("rebase-twice")
    rebased = [(e["exp"], e.get("ahead", False)) for e in events if e["event"] == "ahead_rebased"]
    assert rebased == [(2, False), (3, True)]  # B1 in line, B2 while exp 2 trained
    done = {e["exp"]: e["timestamp"] for e in events if e["event"] == "run_done"}
    assert next(e["timestamp"] for e in events if e["event"] == "ahead_rebased" and e["exp"] == 3) < done[2]
    assert [e["exp"] for e in events if e["event"] == "vet" and e.get("reason") == "vetted ahead"] == [3, 4]
