"""Spend caps checked before every call (failed calls counted) and outages that never end the
night: real campaigns on the tiny target, scripted model answers with scripted prices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from org import campaign as c
from org import report as r
from org.ledger import Ledger
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"
HOSTED = "anthropic/claude-sonnet-4-5"


def _org(tmp_path: Path, director_extra: str = "", director_every: int = 1) -> Path:
    """The tiered org with review off, the director asked every experiment, and `director_extra`
    added to its front matter."""
    org = tmp_path / "org"
    shutil.copytree(ROLES / "tiered", org)
    text = (org / "org.md").read_text().replace("review: true", "review: false")
    (org / "org.md").write_text(text.replace("director_every: 5", f"director_every: {director_every}"))
    d = (org / "director.md").read_text()
    (org / "director.md").write_text(d.replace("fallback: local/gemma3-270m", "fallback: local/gemma3-270m\n" + director_extra))
    return org


def _moves() -> list[dict]:
    return [knob("LR", "x2"), knob("DEPTH", "+1"), knob("USE_GATE", "toggle"), knob("LR", "x0.5"), knob("DEPTH", "-1")]


@pytest.mark.parametrize(("cap", "price"), [("cap_usd: 0.04", {"cost_usd": 0.02}), ("cap_tokens: 200", {"tokens": 100})])
def test_a_role_cap_falls_back_before_the_call_that_would_pass_it(tmp_path, cap, price):
    program = make_repo(tmp_path / "repo")
    client = ScriptedClient(script={"proposer": _moves(), "director": [DIRECTIVE, None]},  # the 2nd call fails
                            default={"director": DIRECTIVE}, local_free=True, **price)  # fmt: skip
    c.start(program, _org(tmp_path, cap), tag="cap", max_experiments=4, models=client)
    ledger = Ledger(c.campaign_dir("cap") / "ledger.db")
    calls = [k for k in ledger.db["calls"].rows if k["role"] == "director"]
    assert [k["model_used"] for k in calls[:2]] == [HOSTED, HOSTED] and calls[1]["ok"] == 0  # a failed call counts
    # past the cap its fallback would answer: an embedded base model, so the director is not asked
    assert len(calls) == 2
    usd, tokens = ledger.spend("director")
    assert (usd, tokens) == ((0.04, 0) if "usd" in cap else (0.0, 200))  # exactly at the cap, never past it
    events = [json.loads(x) for x in (c.campaign_dir("cap") / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "spend_cap" for e in events)
    skipped = [(e["role"], e["model"]) for e in events if e["event"] == "not_asked"]
    assert len(skipped) >= 2 and set(skipped) == {("director", "local/gemma3-270m")}


def test_the_total_cap_stops_the_campaign_cleanly_and_resume_stays_stopped(tmp_path):
    program = make_repo(tmp_path / "repo", stop="{max_usd: 0.05}")
    client = ScriptedClient(script={"proposer": _moves()}, default={"director": DIRECTIVE}, cost_usd=0.02,
                            local_free=True)  # fmt: skip
    state = c.start(program, _org(tmp_path), tag="total", max_experiments=5, models=client)
    assert state["stopped"].startswith("the total spend cap: 0.04 USD spent")
    ledger = Ledger(c.campaign_dir("total") / "ledger.db")
    assert ledger.spend() == (0.04, 0) and len(ledger.experiments()) == 3  # baseline, then 2 directed experiments
    sent = len(client.sent)
    again = c.resume("total", models=client)
    assert again["stopped"].startswith("the total spend cap") and len(client.sent) == sent
    assert c.agreement_problems("total") == []


def test_an_outage_degrades_to_the_local_tier_and_the_campaign_completes(tmp_path):
    program = make_repo(tmp_path / "repo")
    client = ScriptedClient(script={"proposer": _moves()}, default={"director": DIRECTIVE, "reviewer": APPROVE},
                            outage={"director": 2})  # fmt: skip
    state = c.start(program, _org(tmp_path), tag="out", max_experiments=3, models=client)
    assert state["stopped"] == "reached max_experiments=3"
    d = r.data("out")
    assert d["degraded"]["director"]["fallback_calls"] == 2 and d["degraded"]["director"]["failed_calls"] == 0
    assert "director" in r.markdown_text(d).split("Degraded roles")[1].split("\n")[0]


def test_an_outage_of_every_model_waits_and_never_ends_the_night(tmp_path, monkeypatch):
    monkeypatch.setenv("NIGHTLAB_OUTAGE_WAIT_S", "0.05")
    program = make_repo(tmp_path / "repo")
    org = tmp_path / "org"
    org.mkdir()
    (org / "org.md").write_text("---\nname: hosted\nroles:\n  proposer: proposer.md\nreview: false\n---\n")
    proposer = (ROLES / "tiered" / "proposer.md").read_text().replace("model: local/gemma3-270m", f"model: {HOSTED}")
    (org / "proposer.md").write_text(proposer)  # hosted, no fallback: an outage leaves it nothing
    client = ScriptedClient(script={"proposer": _moves()}, outage={"proposer": 3})
    state = c.start(program, org, tag="wait", max_experiments=2, models=client)
    assert state["stopped"] == "reached max_experiments=2"
    calls = [k for k in Ledger(c.campaign_dir("wait") / "ledger.db").db["calls"].rows]
    assert [k["model_used"] for k in calls[:4]] == ["", "", "", HOSTED]  # three failed, then it answered
    events = (c.campaign_dir("wait") / "events.jsonl").read_text()
    assert events.count('"event": "outage"') == 3 and '"wait_s": 0.1' in events  # the wait doubles
    assert r.data("wait")["degraded"]["proposer"]["failed_calls"] == 3


def test_the_real_clients_estimate_bounds_a_call_from_litellms_prices(monkeypatch):
    from org.models import ModelClient
    from org.roles import load_role

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-used")  # priced, never called
    role = load_role(ROLES / "tiered" / "director.md")
    msgs = [{"role": "system", "content": "word " * 400}, {"role": "user", "content": "go"}]
    usd, tokens = ModelClient().estimate(role, msgs)
    attempts, out = role.spec.max_attempts, role.spec.max_tokens
    assert tokens >= attempts * (400 + out) and 0 < usd < 1
    # every attempt's completion at the model's output price is inside the bound
    from org.models.registry import litellm_module

    _, completion = litellm_module().cost_per_token(model=role.spec.model, prompt_tokens=0, completion_tokens=out)
    assert usd >= attempts * completion
    monkeypatch.delenv("ANTHROPIC_API_KEY")  # no key: the local fallback answers, for nothing
    assert ModelClient().estimate(role, msgs) == (0.0, 0)
