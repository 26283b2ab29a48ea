"""The full campaign loop on CPU: scripted roles, a tiny real target, real git/SQLite/memory."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from org import campaign as c
from org.ledger import Ledger
from org.program import StopSpec
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_keep_discard_crash_and_failures(tmp_path):
    program = make_repo(tmp_path / "repo", smoke_timeout_s="null")  # no smoke gate: let it crash
    client = ScriptedClient(
        script={"proposer": [
            knob("LR", "x2"),  # 1: keep
            knob("DEPTH", "+1"),  # 2: discard
            None,  # invalid output: recorded, fed back, no experiment number used
            knob("DEPTH", "x0.5"),  # 3: DEPTH 2 crashes
            knob("DEPTH", "+1"),  # repeats 2: no longer offered, so it does not fit the schema
            knob("USE_GATE", "toggle"),  # the peer reviewer rejects it
            knob("LR", "x2"),  # 4: keep
        ], "reviewer": [APPROVE, APPROVE, APPROVE, {"approve": False, "reason": "no evidence"}]},
        default={"director": DIRECTIVE, "reviewer": APPROVE},
    )
    state = c.start(program, ROLES / "tiered", tag="t1", max_experiments=4, models=client)

    assert state["stopped"] == "reached max_experiments=4"
    d = c.campaign_dir("t1")
    ledger = Ledger(d / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows] == ["keep", "keep", "discard", "crash", "keep"]
    assert rows[0]["description"] == "baseline"
    assert rows[1]["description"] == "LR x2: 0.01 -> 0.02"
    assert rows[4]["description"] == "LR x2: 0.02 -> 0.04"
    assert rows[0]["metric"] > rows[1]["metric"] > rows[4]["metric"]
    assert rows[2]["metric"] > rows[1]["metric"]
    assert rows[3]["metric"] is None and rows[2]["memory_gb"] == 5 * 512 / 1024
    assert all(r["network"].startswith(("bubblewrap: no network", "isolated", "not isolated: ")) for r in rows)  # per run
    failures = [f["stage"] for f in ledger.failures()]
    assert sorted(failures) == ["propose", "propose", "vet:review"]

    # results.tsv: autoresearch's columns first, crash row as 0.000000 / 0.0
    lines = (d / "results.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:5] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert lines[0].split("\t")[5:] == ["hypothesis", "role", "model", "cost_usd", "seconds",
                                        "runs", "sd", "delta", "confidence", "test_val_bpb", "test_delta"]
    crash = lines[4].split("\t")
    assert crash[1:4] == ["0.000000", "0.0", "crash"]

    # git: the branch holds exactly the kept experiments, in order; discards/crashes are gone
    wt = d / "worktree"
    record = c.load_record("t1")
    on_branch = _git(wt, "rev-list", "--reverse", f"{record.base_commit}..HEAD").split()
    assert on_branch == [rows[1]["commit"], rows[4]["commit"]]
    assert _git(wt, "rev-parse", "--abbrev-ref", "HEAD").strip() == "nightlab/t1"
    assert "LR = 0.04  # learning rate" in (wt / "target" / "train.py").read_text()
    assert _git(wt, "status", "--porcelain") == ""
    assert c.agreement_problems("t1") == []

    # the proposer saw its own failures on the next cycle; the director and reviewer were asked
    proposer_prompts = [s["messages"][0]["content"] for s in client.sent if s["role"] == "proposer"]
    assert "no valid answer" in proposer_prompts[3] and "crash: DEPTH x0.5" in proposer_prompts[4]
    # a move memory holds from the current value is neither listed nor allowed by the grammar
    repeat = [s for s in client.sent if s["role"] == "proposer"][4]
    assert "+1" not in repeat["schema"].knob_moves["DEPTH"] and "x2" in repeat["schema"].knob_moves["DEPTH"]
    depth_line = next(ln for ln in proposer_prompts[4].splitlines() if ln.startswith("DEPTH = 4"))
    assert "+1" not in depth_line and "x0.5" not in depth_line and "x2" in depth_line
    assert "does not fit" in proposer_prompts[5]
    assert "peer review: no evidence" in proposer_prompts[6]
    assert "Try LR x2." in proposer_prompts[0]
    roles = [s["role"] for s in client.sent]
    assert roles[0] == "director" and roles.count("reviewer") == 5  # not for the duplicate: cheaper gates first
    # the user's own checkout was never touched
    assert "LR = 0.01" in (program.parents[1] / "target" / "train.py").read_text()


def test_edit_mode_non_applying_edit_and_program_knobs(tmp_path):
    program = make_repo(tmp_path / "repo", knobs="{DEPTH: 5}")
    edit_ok = {"hypothesis": "gating helps", "edits": [
        {"path": "train.py", "search": "USE_GATE = False", "replace": "USE_GATE = True"}]}
    edit_bad = {"hypothesis": "nope", "edits": [
        {"path": "train.py", "search": "NOT IN FILE", "replace": "x"}]}
    edit_syntax = {"hypothesis": "broken", "edits": [
        {"path": "train.py", "search": "DEPTH = 5", "replace": "DEPTH = = 5"}]}
    client = ScriptedClient(script={"proposer": [edit_bad, edit_syntax, edit_ok]})
    state = c.start(program, ROLES / "solo", tag="e1", max_experiments=1, models=client)
    rows = Ledger(c.campaign_dir("e1") / "ledger.db").experiments()
    assert rows[0]["description"] == "baseline: DEPTH=5"
    assert [r["status"] for r in rows] == ["keep", "keep"]
    assert rows[1]["description"].startswith("gating helps [train.py]")
    stages = [f["stage"] for f in Ledger(c.campaign_dir("e1") / "ledger.db").failures()]
    assert sorted(stages) == ["apply", "vet:syntax"]
    wt = c.campaign_dir("e1") / "worktree"
    log = _git(wt, "log", "--format=%s").splitlines()
    assert log[0].startswith("exp 1: gating helps") and log[1].startswith("program knobs: baseline: DEPTH=5")
    assert state["best_metric"] == rows[1]["metric"]
    assert c.agreement_problems("e1") == []


def test_fallback_reviewer_only_advises(tmp_path):
    """A rejection from the reviewer's fallback model (not the judge the org chose) is logged,
    not enforced; spend from scripted costs adds up per experiment."""
    program = make_repo(tmp_path / "repo")
    client = ScriptedClient(
        script={"proposer": [knob("LR", "x2")]},
        default={"director": DIRECTIVE, "reviewer": {"approve": False, "reason": "meh"}},
        answered_by={"reviewer": "ollama_chat/qwen2.5:3b"}, cost_usd=0.01,
    )
    c.start(program, ROLES / "tiered", tag="fb", max_experiments=1, models=client)
    rows = Ledger(c.campaign_dir("fb") / "ledger.db").experiments()
    assert [r["status"] for r in rows] == ["keep", "keep"]
    assert abs(rows[1]["cost_usd"] - 0.03) < 1e-9  # director + proposer + reviewer
    events = (c.campaign_dir("fb") / "events.jsonl").read_text()
    assert '"event": "review_advisory"' in events and '"reason": "meh"' in events
    assert '"model": "ollama_chat/qwen2.5:3b"' in events
    review = [g for g in Ledger(c.campaign_dir("fb") / "ledger.db").gates() if g["gate"] == "review"]
    assert [(g["ok"], g["reason"]) for g in review] == [(1, "advisory rejection from reviewer ollama_chat/qwen2.5:3b "
                                                          "(it may only advise): meh")]  # fmt: skip


def test_an_embedded_base_model_is_never_asked_for_words(tmp_path):
    """Offline, the tiered org's director would be answered by its local fallback and its compactor
    is local; here the reviewer is the base model too: none is asked (Calls.ask_words). The proposer still picks knob moves,
    compaction uses memory's own grouping, and no direction note is written. An answer a base
    model gave anyway (a primary failing over mid-call) is recorded as a call and not used."""
    from memory import NoteStore
    from org.settings import home_dir

    program = make_repo(tmp_path / "repo")
    org = tmp_path / "tiered"
    shutil.copytree(ROLES / "tiered", org)
    text = (org / "org.md").read_text()
    (org / "org.md").write_text(text.replace("director_every: 5", "director_every: 1")
                                .replace("compact_every: 10", "compact_every: 1"))
    reviewer = (org / "reviewer.md").read_text()  # the base model as the org's own reviewer
    (org / "reviewer.md").write_text(reviewer.replace("model: anthropic/claude-haiku-4-5\nfallback: local/gemma3-270m\n",
                                                      "model: local/gemma3-270m\n"))
    words = {"director": DIRECTIVE, "reviewer": {"approve": False, "reason": "test_small_small"},
             "compactor": {"lessons": []}}
    client = ScriptedClient(script={"proposer": [knob("LR", "x2"), knob("DEPTH", "+1")]}, default=words,
                            down={"director"})  # fmt: skip
    state = c.start(program, org, tag="base", max_experiments=2, models=client)
    assert state["stopped"] == "reached max_experiments=2"
    assert {s["role"] for s in client.sent} == {"proposer"}
    events = [json.loads(line) for line in (c.campaign_dir("base") / "events.jsonl").read_text().splitlines()]
    assert {e["role"] for e in events if e["event"] == "not_asked"} == {"director", "reviewer", "compactor"}
    assert {e["model"] for e in events if e["event"] == "not_asked"} == {"local/gemma3-270m"}
    kinds = {e["event"] for e in events}
    assert "compact" in kinds and "directive" not in kinds
    ledger = Ledger(c.campaign_dir("base") / "ledger.db")
    review = [g for g in ledger.gates() if g["gate"] == "review"]
    assert review and all(g["ok"] and "not reviewed" in g["reason"] and "test_small" not in g["reason"] for g in review)
    assert NoteStore(home_dir()).notes(kind="direction") == []

    # the director's primary fails over to the base model during the call: recorded, not used
    client = ScriptedClient(script={"proposer": [knob("LR", "x2")]}, default={**words, "reviewer": APPROVE},
                            answered_by={"director": "local/gemma3-270m"})  # fmt: skip
    c.start(program, ROLES / "tiered", tag="over", max_experiments=1, models=client)
    events = (c.campaign_dir("over") / "events.jsonl").read_text()
    assert '"event": "answer_unused"' in events and '"event": "directive"' not in events
    calls = list(Ledger(c.campaign_dir("over") / "ledger.db").db["calls"].rows)
    assert ("director", "local/gemma3-270m") in {(r["role"], r["model_used"]) for r in calls}


def test_program_search_space_bounds_what_the_proposer_is_offered(tmp_path):
    program = make_repo(tmp_path / "repo", fixed_knobs="[USE_GATE, SLEEP_S]", knob_ranges="{LR: [0.006, 0.015]}",
                        knob_moves="{DEPTH: [x2, x0.5]}")  # fmt: skip
    client = ScriptedClient(script={"proposer": [knob("DEPTH", "x2")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})  # fmt: skip
    c.start(program, ROLES / "tiered", tag="sp", max_experiments=1, models=client)
    sent = next(s for s in client.sent if s["role"] == "proposer")
    moves = sent["schema"].knob_moves
    assert set(moves) == {"DEPTH", "LR"} and moves["LR"] == ("x1.5", "x0.67") and moves["DEPTH"] == ("x2", "x0.5")
    prompt = sent["messages"][0]["content"]
    assert "USE_GATE: gated units  (fixed)" in prompt and "LR = 0.01  [moves: x1.5, x0.67]" in prompt
    assert "USE_GATE = " not in prompt  # only movable knobs get a value line
    director = next(s for s in client.sent if s["role"] == "director")["messages"][0]["content"]
    assert "SLEEP_S = 0.0  # pretend to train this long  [moves: fixed]" in director


def test_reviewer_known_down_is_not_asked(tmp_path):
    """When only the reviewer's fallback could answer, its verdict could only advise: the call is
    skipped, and the gate records that the change went unreviewed."""
    program = make_repo(tmp_path / "repo")
    client = ScriptedClient(script={"proposer": [knob("LR", "x2")]},
                            default={"director": DIRECTIVE, "reviewer": {"approve": False, "reason": "meh"}},
                            down={"reviewer"})  # fmt: skip
    c.start(program, ROLES / "tiered", tag="rd", max_experiments=1, models=client)
    ledger = Ledger(c.campaign_dir("rd") / "ledger.db")
    assert [r["status"] for r in ledger.experiments()] == ["keep", "keep"]
    assert "reviewer" not in [s["role"] for s in client.sent]
    review = [g for g in ledger.gates() if g["gate"] == "review"]
    assert len(review) == 1 and review[0]["ok"] and "not reviewed (fail-open)" in review[0]["reason"]


def test_stop_rules_and_cli_overrides():
    stop = StopSpec(max_experiments=3, max_hours=1.0, max_usd=0.5, max_failures_in_row=4)
    assert stop.reason(2, 3, seconds=3599, spend_usd=0.49) is None
    assert stop.reason(3, 0, seconds=0, spend_usd=0) == "reached max_experiments=3"
    assert stop.reason(0, 0, seconds=3600, spend_usd=0) == "reached max_hours=1.0"
    assert stop.reason(0, 0, seconds=0, spend_usd=0.5) == "reached max_usd=0.5"
    assert stop.reason(0, 4, seconds=0, spend_usd=0) == "4 proposals in a row never reached a run"
    assert stop.overridden(max_experiments=None) == stop
    assert stop.overridden(max_experiments=7) == stop.model_copy(update={"max_experiments": 7})


def test_resume_finished_campaign_extends_only_when_asked(tmp_path):
    program = make_repo(tmp_path / "repo")
    client = ScriptedClient(script={"proposer": [knob("LR", "x2"), knob("USE_GATE", "toggle")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})
    c.start(program, ROLES / "tiered", tag="x", max_experiments=1, models=client)
    sent = len(client.sent)
    state = c.resume("x", models=client)  # limit reached: nothing runs, nothing is asked
    assert state["stopped"] == "reached max_experiments=1" and len(client.sent) == sent
    state = c.resume("x", max_experiments=2, models=client)
    rows = Ledger(c.campaign_dir("x") / "ledger.db").experiments()
    assert [r["n"] for r in rows] == [0, 1, 2] and rows[2]["description"] == "USE_GATE toggle: False -> True"
    assert state["stopped"] == "reached max_experiments=2" and c.agreement_problems("x") == []


def test_proposals_per_round_tries_the_next_candidate_without_asking_again(tmp_path):
    program = make_repo(tmp_path / "repo")
    org = tmp_path / "org"
    import shutil

    shutil.copytree(ROLES / "tiered", org)
    text = (org / "org.md").read_text().replace("proposals_per_round: 1", "proposals_per_round: 2")
    (org / "org.md").write_text(text)
    client = ScriptedClient(
        script={"proposer": [knob("DEPTH", "+1"), knob("LR", "x2")],
                "reviewer": [{"approve": False, "reason": "depth is a dead end"}, APPROVE]},
        default={"director": DIRECTIVE},
    )
    c.start(program, org, tag="ppr", max_experiments=1, models=client)
    rows = Ledger(c.campaign_dir("ppr") / "ledger.db").experiments()
    assert rows[1]["description"] == "LR x2: 0.01 -> 0.02"
    assert [s["role"] for s in client.sent] == ["director", "proposer", "proposer", "reviewer", "reviewer"]


def test_director_is_called_on_a_plateau_whatever_its_cadence(tmp_path):
    """plateau_after=2, director_every=100: the director speaks at the start, then after every 2nd
    experiment in a row without a keep, and not again on the failed proposal in between."""
    org = tmp_path / "org"
    shutil.copytree(ROLES / "tiered", org)
    text = (org / "org.md").read_text()
    (org / "org.md").write_text(text.replace("director_every: 5", "director_every: 100")
                                .replace("plateau_after: 8", "plateau_after: 2"))  # fmt: skip
    program = make_repo(tmp_path / "repo")
    moves = [knob("DEPTH", "+1"), knob("DEPTH", "-1"), None, knob("LR", "x0.5"), knob("LR", "x0.67"),
             knob("DEPTH", "x2")]  # all worse than the baseline; None is an invalid answer
    client = ScriptedClient(script={"proposer": moves}, default={"director": DIRECTIVE, "reviewer": APPROVE})
    state = c.start(program, org, tag="plateau", max_experiments=5, models=client)

    rows = Ledger(c.campaign_dir("plateau") / "ledger.db").experiments()
    assert [r["status"] for r in rows[1:]] == ["discard"] * 5 and state["since_keep"] == 5
    calls = [s["role"] for s in client.sent if s["role"] in ("director", "proposer")]
    # D, exp 1, exp 2, D (plateau of 2), invalid answer, exp 3, exp 4, D (plateau of 4), exp 5
    assert calls == ["director", "proposer", "proposer", "director", "proposer", "proposer", "proposer",
                     "director", "proposer"]


def test_ledger_is_usable_from_langgraphs_worker_thread(tmp_path):
    """LangGraph runs a node on its executor thread after some resumes (CI saw it in propose):
    the ledger opened on the main thread must still answer there."""
    from concurrent.futures import ThreadPoolExecutor

    ledger = Ledger(tmp_path / "ledger.db")
    row = dict(n=0, commit="abc", parent="", metric=1.0, memory_gb=0.0, status="keep",
               description="baseline", hypothesis="h", role="baseline", model="", cost_usd=0.0,
               seconds=1.0, knob_move="", log="", network="")  # fmt: skip
    with ThreadPoolExecutor(1) as pool:
        pool.submit(ledger.record_experiment, row).result()
        assert [r["n"] for r in pool.submit(ledger.experiments).result()] == [0]
    ledger.close()


def test_a_move_back_to_files_already_run_is_not_offered(tmp_path):
    """LR 0.01 -> 0.02 kept; LR x0.5 from there would re-run the baseline's exact files: new to
    memory as a move (0.02->0.01), but the ledger has the result, so it is not offered."""
    program = make_repo(tmp_path / "repo", smoke_timeout_s="null")
    train = tmp_path / "repo" / "target" / "train.py"
    train.write_text(train.read_text().replace("LR = 0.01", "SEED = 42  # random seed\nLR = 0.01"))
    _git(tmp_path / "repo", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "seed knob")
    client = ScriptedClient(
        script={"proposer": [knob("LR", "x2"), knob("LR", "x0.5"), knob("DEPTH", "+1")]},
        default={"director": DIRECTIVE, "reviewer": APPROVE},
    )
    c.start(program, ROLES / "tiered", tag="back", max_experiments=2, models=client)
    calls = [s for s in client.sent if s["role"] == "proposer"]
    assert "x0.5" not in calls[1]["schema"].knob_moves["LR"]
    assert "x1.5" in calls[1]["schema"].knob_moves["LR"]  # 0.03 was never run: still offered
    assert "SEED" not in calls[0]["schema"].knob_moves  # a seed move is noise: never offered
    assert "SEED: random seed  (fixed)" in calls[0]["messages"][0]["content"]
    rows = Ledger(c.campaign_dir("back") / "ledger.db").experiments()
    assert [r["description"] for r in rows] == ["baseline", "LR x2: 0.01 -> 0.02", "DEPTH +1: 4 -> 5"]


def test_an_edit_that_restores_files_already_run_is_a_duplicate(tmp_path):
    program = make_repo(tmp_path / "repo")
    on = {"hypothesis": "gating helps", "edits": [
        {"path": "train.py", "search": "USE_GATE = False", "replace": "USE_GATE = True"}]}
    undo = {"hypothesis": "gating hurts after all", "edits": [
        {"path": "train.py", "search": "USE_GATE = True", "replace": "USE_GATE = False"}]}
    deeper = {"hypothesis": "capacity", "edits": [
        {"path": "train.py", "search": "DEPTH = 4", "replace": "DEPTH = 5"}]}
    client = ScriptedClient(script={"proposer": [on, undo, deeper]})
    c.start(program, ROLES / "solo", tag="undo", max_experiments=2, models=client)
    ledger = Ledger(c.campaign_dir("undo") / "ledger.db")
    assert [r["hypothesis"] for r in ledger.experiments()[1:]] == ["gating helps", "capacity"]
    (fail,) = ledger.failures()
    assert fail["stage"] == "vet:duplicate"
    assert "the same files already ran as experiment #0 (baseline: keep" in fail["reason"]


def test_a_knob_space_with_nothing_left_to_offer_asks_no_model(tmp_path):
    """Only USE_GATE may move: once it is kept, the move back would re-run the baseline's files, so
    nothing is left from the best. The proposer is not asked again and the campaign stops, saying
    why; with the pipeline, nothing is counted against the proposer while the keep is pending.
    A space with no movable knob at all is a bad program (exit 2), not a spent one."""
    from org.errors import InputError

    for depth in ("0", "1"):
        program = make_repo(tmp_path / f"repo{depth}", fixed_knobs="[SLEEP_S, LR, DEPTH]", pipeline_depth=depth,
                            sleep=1.0 if depth == "1" else 0.0)  # fmt: skip
        client = ScriptedClient(script={"proposer": [knob("USE_GATE", "toggle")]},
                                default={"director": DIRECTIVE, "reviewer": APPROVE})  # fmt: skip
        state = c.start(program, ROLES / "tiered", tag=f"dry{depth}", max_experiments=4, models=client)
        assert state["stopped"] == ("search space spent: nothing left to offer: all 1 knob moves from the best "
                                    "have run, are known to memory or are in flight (no model asked)")  # fmt: skip
        assert [s["role"] for s in client.sent if s["role"] == "proposer"] == ["proposer"]
        ledger = Ledger(c.campaign_dir(f"dry{depth}") / "ledger.db")
        assert [r["status"] for r in ledger.experiments()] == ["keep", "keep"] and ledger.failures() == []
        events = (c.campaign_dir(f"dry{depth}") / "events.jsonl").read_text()
        assert ('"event": "ahead_exhausted"' in events) == (depth == "1")

    program = make_repo(tmp_path / "none", fixed_knobs="[SLEEP_S, LR, DEPTH, USE_GATE]")
    client = ScriptedClient(default={"director": DIRECTIVE, "reviewer": APPROVE})
    with pytest.raises(InputError, match="no movable knobs") as e:
        c.start(program, ROLES / "tiered", tag="none", max_experiments=1, models=client)
    assert e.value.field == "knobs"


def test_a_base_models_edit_is_recorded_by_what_it_did_not_by_its_words(tmp_path):
    program = make_repo(tmp_path / "repo")
    junk = {"hypothesis": "choose-1 keep y", "edits": [
        {"path": "train.py", "search": "USE_GATE = False", "replace": "USE_GATE = True"}]}
    client = ScriptedClient(script={"proposer": [junk]}, answered_by={"proposer": "local/gemma3-270m"})
    c.start(program, ROLES / "solo", tag="base-edit", max_experiments=1, models=client)
    row = Ledger(c.campaign_dir("base-edit") / "ledger.db").experiments()[1]
    assert row["hypothesis"] == "local/gemma3-270m (a base model) wrote 1 edit(s) to train.py"
    assert row["description"] == "local/gemma3-270m (a base model) wrote 1 edit(s) to train.py [train.py]"
    assert "choose-1" not in (c.campaign_dir("base-edit") / "results.tsv").read_text()
