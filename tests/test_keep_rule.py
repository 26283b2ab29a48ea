"""Honest keeps end to end: a replicated baseline, a confirmed keep, a no-op discarded as noise.

The tiny target adds TINY_NOISE * N(0, 1) drawn from the seed TINY_SEED, so its runs are noisy
and a replicate with a new seed gives a new value (the same seed gives the same noise in every
configuration: the org compares changes on common seeds).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memory import NoteStore
from org import campaign as c
from org.errors import InputError
from org.ledger import Ledger
from org.program import load_program
from org.settings import home_dir
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"
NOISY = {"env": "{TINY_NOISE: '0.004'}",
         "noise": "{seed_env: TINY_SEED, baseline_runs: 3, max_replicates: 3, confidence: 0.95}"}


def test_confirmed_keep_noise_discard_and_clearly_worse(tmp_path):
    program = make_repo(tmp_path / "repo", sleep=0.01, **NOISY)
    client = ScriptedClient(
        script={"proposer": [
            knob("LR", "x2"),  # 1: val_bpb -0.021 (about 5 sigma): kept once replicates confirm it
            knob("SLEEP_S", "x2"),  # 2: no effect on the metric: discarded inside the noise
            knob("DEPTH", "x2"),  # 3: +0.16: clearly worse after one run
        ]},
        default={"director": DIRECTIVE, "reviewer": APPROVE},
    )
    state = c.start(program, ROLES / "tiered", tag="noisy", max_experiments=3, models=client)
    assert state["stopped"] == "reached max_experiments=3"
    ledger = Ledger(c.campaign_dir("noisy") / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows] == ["keep", "keep", "discard", "discard"]
    runs = [r["runs"] for r in rows]
    # baseline_runs; a keep needs >= 3 runs; a no-op stopped once it is not ahead (exactly level on
    # common seeds: at run 2, or up to the last run); screened at run 1
    assert runs[0] == 3 and 3 <= runs[1] <= 4 and 2 <= runs[2] <= 4 and runs[3] == 1
    assert [r["inconclusive"] for r in rows] == [0, 0, 1, 0]
    base_runs = [r["metric"] for r in ledger.runs(0)]
    assert len(set(base_runs)) == 3 and rows[0]["metric"] == pytest.approx(sum(base_runs) / 3)
    assert [r["seed"] for r in ledger.runs(1)] == list(range(runs[1]))  # the baseline's seeds, and on
    assert rows[1]["confidence"] >= 0.95 and rows[1]["delta"] == pytest.approx(-0.0211, abs=0.002)
    assert rows[2]["confidence"] < 0.95 and abs(rows[2]["delta"]) < 0.004  # inside one sigma
    assert rows[3]["confidence"] < 0.05 and rows[3]["delta"] > 0.1
    assert ledger.run_count() == sum(runs)
    assert sum(r["seconds"] for r in ledger.runs(1)) == pytest.approx(rows[1]["seconds"])

    summary = c.summary("noisy")
    assert summary["noise_sigma"] is not None and 0.001 < summary["noise_sigma"] < 0.01
    assert summary["runs"] == sum(runs) and summary["inconclusive"] == 1
    tsv = (c.campaign_dir("noisy") / "results.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[10:] == ["runs", "sd", "delta", "confidence", "test_val_bpb", "test_delta"]
    assert tsv[2].split("\t")[10] == str(runs[1]) and float(tsv[2].split("\t")[13]) >= 0.95
    assert c.agreement_problems("noisy") == []

    # the proposer hears the noise and sees which discards were inside it
    prompts = [s["messages"][0]["content"] for s in client.sent if s["role"] == "proposer"]
    assert "Noise: run-to-run noise sigma = " in prompts[2]
    assert any(" noise " in line and "SLEEP_S x2" in line for line in prompts[2].splitlines())
    assert "discarded: SLEEP_S x2" in prompts[2]
    # memory: the no-op is noted as inconclusive (it may be tried again later), deltas vs the parent
    store = NoteStore(home_dir())
    notes = {n.knob_move: n for n in store.notes(kind="experiment")}
    sleep = next(n for move, n in notes.items() if move and move.startswith("SLEEP_S"))
    lr = next(n for move, n in notes.items() if move and move.startswith("LR"))
    assert sleep.status == "inconclusive" and lr.metric_delta == pytest.approx(rows[1]["delta"])


def test_a_deterministic_target_discards_an_exact_no_op_after_two_runs(tmp_path):
    """`noise.deterministic`: a change whose first two runs reproduce the best's runs with the
    same seeds to the last digit has no effect: discarded after them, as inconclusive (a move that
    did nothing here may act elsewhere, so it is not blocked). A real change on the same program
    is judged by the keep rule as before."""
    deterministic = {**NOISY, "noise": NOISY["noise"].replace("}", ", deterministic: true}")}
    program = make_repo(tmp_path / "repo", sleep=0.01, **deterministic)
    client = ScriptedClient(
        script={"proposer": [knob("SLEEP_S", "x2"), knob("LR", "x2"), knob("SLEEP_S", "x0.5")]},
        default={"director": DIRECTIVE, "reviewer": APPROVE},
    )
    c.start(program, ROLES / "tiered", tag="exact", max_experiments=3, models=client)
    ledger = Ledger(c.campaign_dir("exact") / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows] == ["keep", "discard", "keep", "discard"]
    assert rows[1]["runs"] == 2 and rows[3]["runs"] == 2 and rows[2]["runs"] >= 3
    for n, best in ((1, 0), (3, 2)):  # each against the best of its time: the baseline, then LR x2
        assert rows[n]["inconclusive"] == 1 and rows[n]["confidence"] is None
        assert [r["metric"] for r in ledger.runs(n)] == [r["metric"] for r in ledger.runs(best)][:2]
        assert rows[n]["delta"] == pytest.approx(rows[n]["metric"] - rows[best]["metric"])  # vs the parent's mean
    events = [json.loads(line) for line in (c.campaign_dir("exact") / "events.jsonl").read_text().splitlines()]
    verdicts = {e["exp"]: e for e in events if e.get("event") == "judge" and e.get("verdict") == "discard"}
    assert sorted(verdicts) == [1, 3] and all("no effect: seeds 0 (" in verdicts[n]["reason"] for n in (1, 3))
    notes = {n.knob_move: n for n in NoteStore(home_dir()).notes(kind="experiment")}
    assert {n.status for move, n in notes.items() if move and move.startswith("SLEEP_S")} == {"inconclusive"}


@pytest.mark.parametrize(("noise", "field", "message"), [
    ("{seed_knob: SEED}", "noise.seed_knob", "SEED is not an int constant in target/train.py"),
    ("{seed_env: NO_SUCH_SEED}", "noise.seed_env", "no file under target/ reads NO_SUCH_SEED"),
    ("{baseline_runs: 3}", "noise", "replicate runs need a new seed"),
    ("{seed_env: TINY_SEED, seed_knob: LR}", "noise", "not both"),
    ("{seed_env: TINY_SEED, confidence: 1.5}", "noise.confidence", "less than 1"),
    ("{seed_env: TINY_SEED, confidence: 0.995}", "noise", "too many early looks"),
    ("{baseline_runs: 3, max_replicates: 0}", "noise", "baseline_runs must be 1"),
    ("{seed_env: TINY_SEED, baseline_runs: 1}", "noise", "baseline_runs must be >= 2"),
])
def test_bad_noise_spec_names_the_field(tmp_path, noise, field, message):
    program = make_repo(tmp_path / "repo", noise=noise)
    with pytest.raises(InputError, match=message) as err:
        load_program(program)
    assert err.value.field == field and err.value.path == str(program)


def test_a_change_that_pins_its_seed_is_rejected_not_kept(tmp_path):
    """Edit mode, adversarial: a real improvement plus a seed the replicates can no longer change
    (no rule objects: the line reads no environment). Its replicates agree too well: rejected."""
    program = make_repo(tmp_path / "repo", sleep=0.01, **NOISY)
    pin = {"hypothesis": "higher lr trains faster", "edits": [
        {"path": "train.py", "search": "LR = 0.01", "replace": "LR = 0.02"},
        {"path": "train.py", "search": "random.Random(seed)", "replace": 'random.Random("0")'}]}
    honest = {"hypothesis": "doubling the step size reaches a lower loss within the budget", "edits": [
        {"path": "train.py", "search": "LR = 0.01", "replace": "LR = 0.02"}]}
    client = ScriptedClient(script={"proposer": [pin, honest]})
    c.start(program, ROLES / "solo", tag="pin", max_experiments=2, models=client)
    ledger = Ledger(c.campaign_dir("pin") / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows] == ["keep", "rejected", "keep"]
    assert rows[1]["runs"] == 2 and len({r["metric"] for r in ledger.runs(1)}) == 1  # pinned: equal
    events = (c.campaign_dir("pin") / "events.jsonl").read_text()
    assert "does not read the seed" in events
    assert ledger.run_groups() == [[r["metric"] for r in ledger.runs(0)], [r["metric"] for r in ledger.runs(2)]]
    assert c.agreement_problems("pin") == []
