"""Every role of the shipped `tiered` org, through the REAL embedded model, for one cycle.

No API key is set, so the frontier director falls back to `local/gemma3-270m`; the reviewer is
pointed at it directly (see below).
The org is copied with director/compaction cadence 1 so one experiment exercises all four roles.
"""

from __future__ import annotations

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
    # Offline, the reviewer's fallback is not asked (its verdict could only advise), so the copy
    # makes the embedded model the reviewer's own model: it is asked, and as a base model its
    # rejection advises (enforced, the 270M model rejected all 12 proposals on one night's prompts).
    reviewer = (org / "reviewer.md").read_text()
    (org / "reviewer.md").write_text(reviewer.replace("model: anthropic/claude-haiku-4-5\nfallback: local/gemma3-270m\n",
                                                      "model: local/gemma3-270m\n"))
    program = make_repo(tmp_path / "repo", stop="{max_failures_in_row: 12}")
    # compaction needs two notes on the target: one from an earlier campaign, one from this one
    store = NoteStore(home_dir())
    store.add_experiment("earlier", "tiny", hypothesis="more depth", change="DEPTH +1: 4 -> 5",
                         status="discard", metric=1.08, metric_delta=0.01, knob_move="DEPTH 4->5")
    state = c.start(program, org, tag="real", max_experiments=1, memory=store)

    ledger = Ledger(c.campaign_dir("real") / "ledger.db")
    calls = list(ledger.db["calls"].rows)
    used = {(r["role"], r["model_used"]) for r in calls}
    for role in ("proposer", "director", "reviewer", "compactor"):
        assert (role, "local/gemma3-270m") in used, (role, used, state.get("stopped"))
    assert all(r["cost_usd"] == 0 for r in calls)
    # the grammar makes every answer schema-valid: no role may have needed the failure path
    assert [(r["role"], r["error"]) for r in calls if not r["ok"]] == []
    rows = ledger.experiments()
    assert rows[0]["description"] == "baseline" and len(rows) == 2
    assert rows[1]["model"] == "local/gemma3-270m"
    assert c.agreement_problems("real") == []
