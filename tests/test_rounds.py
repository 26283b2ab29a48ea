"""Fan-out rounds (org/rounds.py): W experiments from one parent, judged against it, side by side
on W slots; the best that passes the keep rule is kept, the others are `beaten`, noted as changes
that helped and free to be tried on the new best. Scripted roles, the tiny real target (each run
sleeps, as training would), real git, ledger, memory and sandbox."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from memory import NoteStore
from org import campaign as c
from org.ledger import Ledger
from org.settings import home_dir
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"


def _events(tag: str) -> list[dict]:
    return [json.loads(line) for line in (c.campaign_dir(tag) / "events.jsonl").read_text().splitlines()]


def test_a_round_runs_side_by_side_and_keeps_its_best_the_beaten_one_is_tried_again_on_it(tmp_path):
    """Round 1 (exps 1, 2 on the baseline): LR x2 (1.0540) and USE_GATE (1.0250) both beat the
    baseline (1.0750); USE_GATE is kept, LR x2 is beaten. Round 2 (exps 3, 4 on USE_GATE): DEPTH +1
    (made during round 1, rebased) is discarded, and LR x2 again, now on the new best, is
    offered and kept: a beaten change blocks no repeat."""
    program = make_repo(tmp_path / "repo", sleep=2.0, fan_out="2", executor="{slots: 2}",
                        test="python -m target.heldout", test_metric="test_bpb")  # fmt: skip
    moves = [knob("LR", "x2"), knob("USE_GATE", "toggle"), knob("DEPTH", "+1"), knob("LR", "x2")]
    client = ScriptedClient(script={"proposer": moves}, default={"director": DIRECTIVE, "reviewer": APPROVE})
    state = c.start(program, ROLES / "tiered", tag="fan", max_experiments=4, models=client)
    assert state["stopped"] == "reached max_experiments=4" and state["pending"] == []
    ledger = Ledger(c.campaign_dir("fan") / "ledger.db")
    rows = ledger.experiments()
    assert [(r["status"], r["description"]) for r in rows[1:]] == [
        ("beaten", "LR x2: 0.01 -> 0.02"), ("keep", "USE_GATE toggle: False -> True"),
        ("discard", "DEPTH +1: 4 -> 5"), ("keep", "LR x2: 0.01 -> 0.02")]  # fmt: skip
    assert ledger.failures() == []
    # every experiment of a round was judged against the round's parent
    assert rows[1]["parent"] == rows[2]["parent"] == rows[0]["commit"]
    assert rows[3]["parent"] == rows[4]["parent"] == rows[2]["commit"]
    assert rows[1]["delta"] < 0 and rows[2]["delta"] < rows[1]["delta"]
    # both pending ones were scored on the held-out split; only the best's saved models remain
    assert rows[1]["test_metric"] is not None and rows[2]["test_metric"] is not None
    saved = sorted(p.name for p in (c.campaign_dir("fan") / "runs").glob("*.pt"))
    assert saved == ["0004.pt"]
    events = _events("fan")
    assert [(e["kept"], e["beaten"]) for e in events if e["event"] == "round"] == [(2, [1]), (4, [])]
    # the second of each round ran on the other slot while the first trained, and was used
    assert [e["exp"] for e in events if e["event"] == "ahead_run_used"] == [2, 4]
    assert not [e for e in events if e["event"] == "ahead_run_unused"]
    starts = {e["exp"]: e["timestamp"] for e in events if e["event"] == "ahead_run"}
    done = {e["exp"]: e["timestamp"] for e in events if e["event"] == "run_done" and e.get("replicate") == 0}
    assert starts[2] < done[1] and starts[4] < done[3]
    # DEPTH +1 was made during round 1 and rebased onto the kept USE_GATE while exp 3 waited
    assert [e["exp"] for e in events if e["event"] == "ahead_rebased"] == [3]
    # the branch stays linear: base, the program's knobs, exp 2, exp 4
    log = subprocess.run(["git", "rev-list", "--first-parent", "HEAD"], cwd=c.campaign_dir("fan") / "worktree",
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert log[:3] == [rows[4]["commit"], rows[2]["commit"], rows[0]["commit"]]
    tsv = (c.campaign_dir("fan") / "results.tsv").read_text().splitlines()
    assert tsv[2].split("\t")[3] == "beaten"
    # memory: one note per experiment, round 1's LR x2 as beaten (it helped; it blocks no retry)
    notes = [n for n in NoteStore(home_dir()).notes(kind="experiment") if n.campaign == "fan"]
    assert sorted(n.evidence[-1] for n in notes) == [f"exp:fan:{i}" for i in range(1, 5)]
    assert {n.evidence[-1]: n.status for n in notes} == {"exp:fan:1": "beaten", "exp:fan:2": "keep",
                                                         "exp:fan:3": "discard", "exp:fan:4": "keep"}  # fmt: skip
    # the proposer heard of the beaten change when round 1 closed
    prompts = ["\n".join(m["content"] for m in s["messages"]) for s in client.sent if s["role"] == "proposer"]
    assert "beaten in its round: LR x2: 0.01 -> 0.02" in prompts[3]


def test_a_round_the_campaign_stops_in_is_decided_on_what_it_ran(tmp_path):
    """max_experiments 3 with rounds of 2: the second round has one experiment; the stop closes it,
    and its keep moves the best (nothing is left pending)."""
    program = make_repo(tmp_path / "repo", sleep=0.5, fan_out="2")
    moves = [knob("DEPTH", "+1"), knob("LR", "x2"), knob("USE_GATE", "toggle")]
    client = ScriptedClient(script={"proposer": moves}, default={"director": DIRECTIVE, "reviewer": APPROVE})
    state = c.start(program, ROLES / "tiered", tag="cut", max_experiments=3, models=client)
    ledger = Ledger(c.campaign_dir("cut") / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows[1:]] == ["discard", "keep", "keep"]
    assert rows[3]["parent"] == rows[2]["commit"]
    assert state["pending"] == [] and state["best_commit"] == rows[3]["commit"]
    assert [(e["kept"], e["beaten"]) for e in _events("cut") if e["event"] == "round"] == [(2, []), (3, [])]


NOISY = {"env": "{TINY_NOISE: '0.004'}", "noise": "{seed_env: TINY_SEED, baseline_runs: 3, max_replicates: 3}"}


def test_on_a_noisy_target_each_is_confirmed_and_two_slots_give_the_verdicts_one_slot_gives(tmp_path, monkeypatch):
    """Seed noise (sd 0.004): every experiment of a round is confirmed by replicates before it can
    be pending, and the round's verdicts do not depend on how many slots ran it: the same moves on
    one slot give the same statuses and the same metrics, run for run."""
    moves = [knob("LR", "x2"), knob("USE_GATE", "toggle"), knob("DEPTH", "+1"), knob("LR", "x2")]

    def campaign(name: str, **front: str) -> list[dict]:
        monkeypatch.setenv("NIGHTLAB_HOME", str(tmp_path / f"home-{name}"))
        program = make_repo(tmp_path / name, sleep=1.0, fan_out="2", **NOISY, **front)
        client = ScriptedClient(script={"proposer": list(moves)}, default={"director": DIRECTIVE, "reviewer": APPROVE})
        c.start(program, ROLES / "tiered", tag=name, max_experiments=4, models=client)
        ledger = Ledger(c.campaign_dir(name) / "ledger.db")
        return [{**r, "runs": [x["metric"] for x in ledger.runs(r["n"])]} for r in ledger.experiments()]

    two = campaign("two", executor="{slots: 2}")
    assert [(r["status"], r["description"].split(":")[0]) for r in two[1:]] == [
        ("beaten", "LR x2"), ("keep", "USE_GATE toggle"), ("discard", "DEPTH +1"), ("keep", "LR x2")]  # fmt: skip
    assert all(len(r["runs"]) >= 2 and r["confidence"] is not None for r in two if r["status"] in ("keep", "beaten")
               and r["n"] > 0)  # fmt: skip
    one = campaign("one")
    assert [(r["status"], r["runs"]) for r in one] == [(r["status"], r["runs"]) for r in two]


def _edit(search: str, replace: str, why: str = "should help") -> dict:
    return {"hypothesis": why, "edits": [{"path": "train.py", "search": search, "replace": replace}]}


def test_a_pending_change_redrawn_from_the_same_parent_is_refused(tmp_path):
    """Edit mode, rounds of 2: exp 1 (LR 0.02) passes and is pending. The same change again with
    other whitespace and a comment (other files, so not the same run; memory notes it only when the
    round closes) would be a second draw for the round's max: the duplicate gate refuses it, and
    the proposer's next change runs as exp 2."""
    program = make_repo(tmp_path / "repo", fan_out="2")
    client = ScriptedClient(script={"proposer": [
        _edit("LR = 0.01  # learning rate", "LR = 0.02  # learning rate"),
        _edit("LR = 0.01  # learning rate", "LR  =  0.02    # learning rate (doubled, again)"),
        _edit("DEPTH = 4  # blocks", "DEPTH = 5  # blocks", "one more block adds capacity"),
    ]})  # fmt: skip
    c.start(program, ROLES / "solo", tag="redraw", max_experiments=2, models=client)
    ledger = Ledger(c.campaign_dir("redraw") / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows[1:]] == ["keep", "discard"]
    assert rows[2]["hypothesis"] == "one more block adds capacity"
    (failure,) = ledger.failures()
    assert failure["stage"] == "vet:duplicate" and "repeats experiment #1" in failure["reason"]
    assert "pending in this round" in failure["reason"]
