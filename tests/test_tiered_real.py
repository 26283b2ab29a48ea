"""The shipped `tiered` org, offline, through the REAL embedded model, for one cycle.

No API key is set, so the frontier director would fall back to `local/gemma3-270m`, and the
compactor is that model: an embedded base model is never asked for words (org/calls.py,
`ask_words`), so neither is asked, and the reviewer (made the base model here) is not either.
The proposer, a closed choice of knob moves, is the one role the base model answers.
The org is copied with director/compaction cadence 1 so one experiment reaches every role.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from memory import NoteStore
from org import campaign as c
from org.ledger import Ledger
from org.settings import home_dir
from tests.tiny import make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"


@pytest.mark.slow
def test_tiered_org_one_cycle_real_model(tmp_path):
    org = tmp_path / "tiered"
    shutil.copytree(ROLES / "tiered", org)
    text = (org / "org.md").read_text()
    (org / "org.md").write_text(text.replace("director_every: 5", "director_every: 1")
                                .replace("compact_every: 10", "compact_every: 1"))
    reviewer = (org / "reviewer.md").read_text()
    (org / "reviewer.md").write_text(reviewer.replace("model: anthropic/claude-haiku-4-5\nfallback: local/gemma3-270m\n",
                                                      "model: local/gemma3-270m\n"))
    program = make_repo(tmp_path / "repo", stop="{max_failures_in_row: 12}")
    # compaction needs two notes on the target: one from an earlier campaign, one from this one
    store = NoteStore(home_dir())
    store.add_experiment("earlier", "tiny", hypothesis="more depth", change="DEPTH +1: 4 -> 5",
                         status="discard", metric=1.08, metric_delta=0.01, knob_move="DEPTH 4->5")
    state = c.start(program, org, tag="real", max_experiments=1, memory=store)
    assert state["stopped"] == "reached max_experiments=1"

    ledger = Ledger(c.campaign_dir("real") / "ledger.db")
    calls = list(ledger.db["calls"].rows)
    assert {(r["role"], r["model_used"]) for r in calls} == {("proposer", "local/gemma3-270m")}
    assert all(r["cost_usd"] == 0 and r["ok"] for r in calls)  # the grammar makes every answer valid
    events = [json.loads(line) for line in (c.campaign_dir("real") / "events.jsonl").read_text().splitlines()]
    assert {e["role"] for e in events if e["event"] == "not_asked"} == {"director", "reviewer", "compactor"}
    assert any(e["event"] == "compact" for e in events)  # memory's own grouping
    rows = ledger.experiments()
    assert rows[0]["description"] == "baseline" and len(rows) == 2
    assert rows[1]["model"] == "local/gemma3-270m"
    assert rows[1]["hypothesis"].startswith("local/gemma3-270m (a base model) picked ")
    assert c.agreement_problems("real") == []
