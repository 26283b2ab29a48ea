"""The campaign loop as a LangGraph StateGraph: nodes first, wiring at the bottom.

    setup -> run (baseline) -> judge -> [test] -> record -> [rebaseline] -> [compact] -> [direct]
          -> propose -> apply -> vet -> run -> judge -> [test] -> record -> ...

Every node returns `Command[Literal[...]]`, so the routing is in the signatures. Side effects are
idempotent per node (apply resets to the best commit first; record upserts by experiment number
and regenerates results.tsv), because after `kill -9` the interrupted node runs again from the
last checkpoint. Model-caused failures (bad output, an edit that does not apply, a vetoed change,
a crash) are written to the ledger and fed back to the proposer; harness errors raise.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from org import manifest, rounds
from org.ahead import adopt, adoptable, behind, dropped, fingerprint, in_flight, replicates, room, speculate, stale
from org.ahead import prepare as prepare_ahead
from org.drift import check_drift
from org.errors import InputError
from org.lab import Lab
from org.measure import child_env, keep_test
from org.outcome import no_run, record_run
from org.prompts import Directive, Lessons, fmt_metric, history_table, keep_rate, knob_listing
from org.proposer import Asking, candidates, commit_proposal
from org.runner import run_command
from org.screening import screen
from org.slots import pinned
from org.smoke import smoke_reason
from org.state import CampaignState, Candidate, Proposal, next_attempt, on_plateau, rebaseline_due
from org.untrusted import fence
from org.verdict import judge_runs, judge_test, noise_estimate, seed_run

Next = Literal["rebaseline", "compact", "direct", "propose", "close_round", "__end__"]
VIOLATION_CHARS = 400  # of a rejection's reasons in the proposer's feedback (the ledger keeps them whole)


# ---- routing helpers ---------------------------------------------------------------------------


def _loop(state: CampaignState, lab: Lab, update: dict[str, Any], after_record: bool) -> Command:
    """Where the loop goes next: end, compact, direct or propose."""
    merged = {**state, **update}
    n_done = merged["n"] - 1  # experiments after the baseline that have been recorded
    spec = lab.org.spec
    # Compaction first: a campaign that stops right after the K-th experiment still distils it.
    if after_record and "compactor" in lab.org.roles and n_done > 0 and n_done % spec.compact_every == 0:
        return Command(goto="compact", update=update)
    reason = lab.stop_reason(n_done, max(merged["fails_in_row"], merged.get("ahead_fails", 0)))
    if reason:
        lab.log.info("stop", reason=reason)
        if merged.get("pending"):  # a round cut short is decided on what it ran, in a node of its own
            return Command(goto="close_round", update={**update, "stopped": reason})
        return Command(goto=END, update={**update, "stopped": reason})
    # The drift check only when another experiment follows: nothing is judged after the last.
    if rebaseline_due(merged, lab.program):
        return Command(goto="rebaseline", update=update)
    if "director" in lab.org.roles:
        if merged["since_direct"] >= spec.director_every or on_plateau(merged, spec.plateau_after):
            return Command(goto="direct", update=update)
    return Command(goto="propose", update=update)


def _failed(state: CampaignState, lab: Lab, stage: str, reason: str,
            proposal: Proposal | None = None) -> Command:  # fmt: skip
    """A model-caused failure before any run: record it, show it to the proposer, go on."""
    attempt = state["attempt"]
    p = proposal or {}
    lab.ledger.record_failure(f"{attempt}:{stage}", state["n"], stage, reason,
                              p.get("hypothesis", ""), p.get("role", ""), p.get("model", ""))  # fmt: skip
    lab.log.info("rejected", exp=state["n"], stage=stage, reason=reason)
    if state.get("commit"):
        lab.workspace.reset(state["best_commit"])
    what = p.get("description") or "your proposal"
    update = {"attempt": next_attempt(state), "fails_in_row": state["fails_in_row"] + 1,
              "feedback": [f"{stage}: {what}: {reason}"], "proposal": None, "commit": None, "prepared": None}  # fmt: skip
    queue = state.get("queue") or []
    if queue:  # another candidate from the same round: try it before asking the model again
        return Command(goto="apply", update={**update, "proposal": queue[0], "queue": queue[1:]})
    return _loop(state, lab, update, after_record=False)


def _dropped(state: CampaignState, lab: Lab, parent: str, error: Exception) -> Command:
    """A proposal the pipeline prepared no longer applies after a keep (org/ahead.py: `dropped`);
    the next one ready, or a new proposal."""
    dropped(lab, state["n"], state["attempt"], state["proposal"] or {}, parent, error)
    lab.workspace.reset(state["best_commit"])
    update = {"attempt": next_attempt(state), "proposal": None, "commit": None, "prepared": None}
    return _loop(state, lab, update, after_record=False)


# ---- nodes -------------------------------------------------------------------------------------


def setup(state: CampaignState, runtime: Runtime[Lab]) -> Command[Literal["run"]]:
    """Prepare the target once, commit the program's knob overrides, then run the baseline."""
    lab = runtime.context
    lab.progress(phase="setup")
    ws, prog = lab.workspace, lab.program
    ws.reset(lab.base_commit)  # idempotent if a kill interrupted an earlier attempt
    for rel, src in prog.data_links():  # ignored data the clean worktree lacks, read-only in runs
        ws.link(rel, src)
    if prog.spec.setup:
        res = run_command(prog.spec.setup, ws.path, child_env(prog, {}), prog.spec.setup_timeout_s,
                          lab.dir / "runs" / "setup.log")  # fmt: skip
        if res.returncode != 0:
            raise InputError(prog.path, "setup", f"setup command failed (exit {res.returncode}, "
                             f"timed out: {res.timed_out}); see {res.log_path}")  # fmt: skip
    manifest.save(lab.data_manifest, manifest.digest(lab.data_roots()))  # checked before every run
    description = "baseline"
    if prog.spec.knobs:
        from org.knobs import set_knobs

        source = ws.read(prog.knob_path)
        ws.write(prog.knob_path, set_knobs(source, prog.spec.knobs, prog.path, prog.spec.knob_style))
        description = "baseline: " + ", ".join(f"{k}={v}" for k, v in prog.spec.knobs.items())
        ws.commit(f"program knobs: {description}", [prog.knob_path])
    proposal = Proposal(hypothesis="unmodified target", description=description, role="baseline",
                        model="", knob_move=None, edits=None)  # fmt: skip
    lab.log.info("setup_done", head=ws.head())
    return Command(goto="run", update={"proposal": proposal, "commit": ws.head(), "best_commit": ws.head(),
                                       "since_direct": lab.org.spec.director_every})  # fmt: skip


def direct(state: CampaignState, runtime: Runtime[Lab]) -> Command[Literal["propose"]]:
    """The director reads the whole record and sets the proposers' direction."""
    lab = runtime.context
    lab.progress(phase="direct", n=state["n"])
    rows = lab.ledger.experiments()
    fails = [f"{f['stage']}: {f['reason']}" for f in lab.ledger.failures(limit=10)]
    knobs = knob_listing(lab.program.search_space(lab.workspace.read(lab.program.knob_path)))
    res = lab.calls.ask_words(
        "director", state["n"], Directive, experiment=state["n"], history=history_table(rows, 40),
        knobs=knobs,
        best_metric=fmt_metric(state["best_metric"]), keep_rate=keep_rate(rows),
        baseline_metric=fmt_metric(state["baseline_metric"]), feedback=fails,
        memory=lab.recall.context("what worked and what failed", 1200), directive=state["directive"],
    )  # fmt: skip
    update: dict[str, Any] = {"since_direct": 0}
    if res is None:  # a base model's turn (Calls.ask_words): the proposers go on without new words
        return Command(goto="propose", update=update)
    if res.value is None:  # keep the old directive; the failure is in the ledger's calls table
        lab.log.info("director_failed", error=res.record.error)
    else:
        d: Directive = res.value
        update["directive"] = d.guidance()
        if state.get("ahead") and update["directive"] != state["directive"]:  # made under the old one
            lab.log.info("ahead_dropped", exp=state["n"], count=len(state["ahead"]), reason="a new directive")
            update["ahead"] = []
        lab.log.info("directive", assessment=d.assessment, directive=update["directive"])
        lab.memory.add_direction(lab.tag, lab.recall.target, f"{d.assessment} {update['directive']}",
                                 evidence=[f"exp:{lab.tag}:{state['n'] - 1}"])  # fmt: skip
    return Command(goto="propose", update=update)


def propose(state: CampaignState, runtime: Runtime[Lab]) -> Command[Literal["apply", "direct", "propose", "close_round", "__end__"]]:
    """The proposer picks one change (org/proposer.py): a knob move (closed choices), search/replace
    edits, or a sampler's trial; or the pipeline has one ready (org/ahead.py)."""
    lab = runtime.context
    lab.progress(phase="propose", n=state["n"])
    if ahead := state.get("ahead"):  # made and vetted while the last run trained
        item = ahead[0]
        if item["n"] != state["n"] and item["proposal"].get("knob_values"):  # one made before it never ran
            lab.sampler(item["proposal"]["role"]).retag(item["n"], item["attempt"], state["n"])
        lab.log.info("proposal", exp=state["n"], candidates=1, description=item["proposal"]["description"],
                     hypothesis=item["proposal"]["hypothesis"], ahead=True)  # fmt: skip
        return Command(goto="apply", update={"proposal": item["proposal"], "queue": [], "ahead": ahead[1:],
                                             "prepared": item, "attempt": item["attempt"]})  # fmt: skip
    asking = Asking(state["n"], state["attempt"], state["best_commit"], state["best_metric"], state["baseline_metric"],
                    state["directive"], tuple(state["feedback"]))  # fmt: skip
    proposals, failures, exhausted = candidates(lab, asking)
    if exhausted and state.get("pending"):  # spent from the round's parent: the round ends here
        return Command(goto="propose", update=rounds.close(lab, state))
    if exhausted:  # nothing in flight, and no move from the best is new: the search is over
        lab.log.info("stop", reason=failures[0])
        return Command(goto=END, update={"stopped": f"search space spent: {failures[0]}"})
    if not proposals:
        return _failed(state, lab, "propose", "; ".join(dict.fromkeys(failures)))
    lab.log.info("proposal", exp=state["n"], candidates=len(proposals),
                 description=proposals[0]["description"], hypothesis=proposals[0]["hypothesis"])  # fmt: skip
    return Command(goto="apply", update={"proposal": proposals[0], "queue": proposals[1:], "prepared": None})


def apply(state: CampaignState, runtime: Runtime[Lab]) -> Command[Literal["vet", "apply", "direct", "propose", "close_round", "__end__"]]:
    """Turn the proposal into one commit on the campaign branch (from the best commit). A proposal
    the pipeline prepared on this best is its commit already; one prepared on an older best is
    rebased (applied again here, and vetted again), or dropped when it no longer applies."""
    lab = runtime.context
    lab.progress(phase="apply", n=state["n"])
    ws, p, prepared = lab.workspace, state["proposal"], state.get("prepared")
    if prepared and prepared["parent"] == state["best_commit"]:
        ws.reset(prepared["commit"])  # the branch moves to it: its parent is the best
        return Command(goto="vet", update={"commit": prepared["commit"]})
    try:
        p = commit_proposal(lab, ws, p, state["n"], state["best_commit"])
    except (InputError, ValueError, KeyError) as e:  # the model's edit did not apply
        if prepared:  # made for an older best: not the model's fault that it no longer fits
            return _dropped(state, lab, prepared["parent"], e)
        return _failed(state, lab, "apply", str(e), p)
    if prepared:
        lab.log.info("ahead_rebased", exp=state["n"], description=p["description"], parent=prepared["parent"][:7])
    return Command(goto="vet", update={"proposal": p, "commit": ws.head(), "prepared": None})


def vet_node(state: CampaignState, runtime: Runtime[Lab]) -> Command[Literal["run", "apply", "direct", "propose", "close_round", "__end__"]]:
    """Scope, syntax, static rules, duplicate, smoke run and peer review before any run is spent
    (org/screening.py); already done for a proposal the pipeline prepared on this best."""
    lab = runtime.context
    lab.progress(phase="vet", n=state["n"])
    lab.workspace.reset(state["commit"])  # idempotent: a kill mid-rejection may have moved HEAD
    p = state["proposal"]
    twice = in_flight(lab, state, besides=state["commit"])
    prepared = state.get("prepared")
    if prepared and prepared["commit"] == state["commit"] and prepared.get("fingerprint") == fingerprint(lab):
        # vetted ahead on this best; only what is recorded since can make it a repeat
        diff = lab.workspace.diff(state["best_commit"])
        if reason := twice(state["commit"]) or lab.recall.repeat(p, diff, commit=state["commit"]):
            lab.ledger.record_gate(state["n"], state["attempt"], "duplicate", False, reason, 0.0)
            return _failed(state, lab, "vet:duplicate", reason, p)
        lab.log.info("vet", exp=state["n"], ok=True, gate="", reason="vetted ahead", gates=[])
        return Command(goto="run")
    verdict = screen(lab, lab.workspace, p, state["n"], state["attempt"], state["best_commit"], state["best_metric"],
                     twice)  # fmt: skip
    for g in verdict.records:  # every gate's verdict, passes (and fail-open warnings) included
        lab.ledger.record_gate(state["n"], state["attempt"], g.gate, g.ok, g.reason, g.seconds)
    lab.log.info("vet", exp=state["n"], ok=verdict.ok, gate=verdict.gate, reason=verdict.reason,
                 gates=[(g.gate, g.ok, round(g.seconds, 2)) for g in verdict.records])  # fmt: skip
    if not verdict.ok:
        return _failed(state, lab, f"vet:{verdict.gate}", verdict.reason, p)
    return Command(goto="run")


def run(state: CampaignState, runtime: Runtime[Lab]) -> Command[Literal["judge", "apply", "direct", "propose", "close_round", "__end__"]]:
    """Run the target at the experiment commit; metrics only from the final summary block. With
    more slots, replicates run side by side and free slots run the first runs of the proposals
    the pipeline has ready (org/ahead.py); a first run one of them already made is used."""
    lab = runtime.context
    n, r = state["n"], state.get("replicate", 0)  # .get: a checkpoint from before replicates
    lab.progress(phase="run" if r == 0 else f"replicate {r}", n=n)
    lab.workspace.reset(state["commit"])  # idempotent: drop what a killed run left behind
    prog = lab.program
    seeding = seed_run(prog, lab.workspace, r)
    if seeding.seed is None:  # the change removed the seed: its result cannot be replicated
        o = no_run(f"{prog.spec.noise.seed_knob} is gone from {prog.knob_path}: a replicate "
                            "cannot change the seed, so the result could never be confirmed")  # fmt: skip
        return Command(goto="judge", update={"outcome": o})
    stale(lab, state)
    ahead_update: dict[str, Any] = {}
    adopted = adoptable(lab, state) if n > 0 and r == 0 else None
    # memory's embedding model loads while the baseline trains (a Ray task would move the run)
    warm = n == 0 and r == 0 and prog.spec.executor.kind == "local"
    parallel = room(lab, state) or behind(state) or len(lab.slots) > 1 or warm

    def meanwhile(running: Any) -> None:  # the pipeline: the next proposals, made and vetted as this trains
        if room(lab, state) or behind(state):
            ahead_update.update(prepare_ahead(lab, state, running))
        if n > 0:  # no first run ahead before the baseline's runs set its caps
            speculate(lab, state, ahead_update.get("ahead", state.get("ahead") or []))
        if warm:  # (a proposal made here has loaded it already)
            lab.memory.warm()

    side: list[Any] = []
    if adopted is not None:  # a free slot started it: the pipeline goes on while it finishes
        meanwhile(adopted.future)
        res = adopt(lab, state, adopted)
    else:
        running = lab.start_target(state["commit"], n, r, dict(seeding.env), inline=not parallel)
        side = replicates(lab, state, r)  # on the slots still free
        if parallel:
            meanwhile(running.future)
        res = lab.end_target(running, state["commit"])
    inline = prog.spec.smoke_inline_s
    if inline is not None and n > 0 and r == 0 and not res.violations:
        # the run was its own smoke test: failing in the window a smoke run covers is a vet
        # rejection (the proposer hears why, no experiment number is spent), later it is a crash
        early = res.seconds <= inline and (res.returncode != 0 or res.timed_out)
        reason = smoke_reason(res, prog.spec.metric) if early else None
        lab.ledger.record_gate(state["n"], state["attempt"], "smoke", not early,
                               reason or f"inline: the run got past its first {inline:g} s", res.seconds)  # fmt: skip
        if reason:
            lab.log.info("vet", exp=state["n"], ok=False, gate="smoke", reason=reason,
                         gates=[("smoke", False, round(res.seconds, 2))])  # fmt: skip
            failed = _failed({**state, **ahead_update}, lab, "vet:smoke", reason, state["proposal"])
            feedback = [*ahead_update.get("feedback", []), *failed.update["feedback"]]
            return Command(goto=failed.goto, update={**ahead_update, **failed.update, "feedback": feedback})
    outcome = record_run(lab, state, r, seeding.seed, res)
    for rep, rep_seeding, running in side:  # replicates that ran beside it, in order
        rep_res = lab.finish(running)  # (its worktree is reset when the slot next starts a run)
        rep_outcome = record_run(lab, state, rep, rep_seeding.seed, rep_res)
        if outcome["metric"] is not None and not outcome["violations"] and (rep_outcome["metric"] is None
                                                                            or rep_outcome["violations"]):  # fmt: skip
            outcome = rep_outcome  # the judge hears of the run that failed
    update = {**ahead_update, "outcome": outcome}
    if side:
        update["replicate"] = side[-1][0]
    return Command(goto="judge", update=update)


def judge(state: CampaignState, runtime: Runtime[Lab]) -> Command[Literal["record", "run", "test"]]:
    """Keep only what beats the best beyond the measured noise, confirmed by replicate runs
    (org/verdict.py); crash if a run gave no metric; rejected if the sandbox caught anything."""
    lab = runtime.context
    o, prog, n = dict(state["outcome"]), lab.program, state["n"]
    if o.get("violations"):  # the sandbox caught something: never keep, whatever it printed
        if n == 0:
            raise InputError(prog.path, "run", f"the unmodified target broke the sandbox: "
                             f"{'; '.join(o['violations'])}; see {o['log']}")  # fmt: skip
        o.update(status="rejected", runs=state.get("replicate", 0) + 1)
        return Command(goto="record", update={"outcome": o})
    if n == 0 and o["metric"] is None:  # the unmodified target must work: user's problem
        if o["returncode"] == 0:
            raise InputError(prog.path, "metric", f"the baseline run never printed "
                             f"'{prog.spec.metric}' in its final --- summary block; see {o['log']}")  # fmt: skip
        raise InputError(prog.path, "run", f"the unmodified target failed (exit {o['returncode']}, "
                         f"timed out: {o['timed_out']}); see {o['log']}")  # fmt: skip
    if o["metric"] is None:  # any run of it crashed (a replicate too): the change is not sound
        o.update(status="crash", runs=state.get("replicate", 0) + 1)
        return Command(goto="record", update={"outcome": o})
    j = judge_runs(prog, lab.ledger, n, lab.ledger.kept_experiment(state["best_commit"]) if n else None)
    lab.log.info("judge", exp=n, verdict=j.status, runs=j.runs, mean=j.metric, sd=j.sd, delta=j.delta,
                 confidence=j.confidence, reason=j.reason)  # fmt: skip
    if j.status == "replicate":
        return Command(goto="run", update={"replicate": state.get("replicate", 0) + 1})
    if j.status == "reject":  # its replicates ignore the seed: they can confirm nothing, never keep
        o.update(status="rejected", violations=[j.reason], metric=j.metric, runs=j.runs, sd=j.sd,
                 delta=j.delta, confidence=j.confidence, reason=j.reason)  # fmt: skip
        return Command(goto="record", update={"outcome": o})
    o.update(status=j.status, metric=j.metric, runs=j.runs, sd=j.sd, delta=j.delta, confidence=j.confidence,
             inconclusive=j.inconclusive, reason=j.reason)  # fmt: skip
    goto = "test" if j.status == "keep" and prog.spec.test else "record"
    return Command(goto=goto, update={"outcome": o})


def test(state: CampaignState, runtime: Runtime[Lab]) -> Command[Literal["record"]]:
    """Score a keep on held-out data with the program's `test` command, over the models its runs
    saved (org/verdict.py: `judge_test`). The score sits beside the verdict and never makes it;
    but a keep whose saved models the harness refuses, or re-scores worse than its runs printed,
    is rejected."""
    lab = runtime.context
    n, o, prog = state["n"], dict(state["outcome"]), lab.program
    lab.progress(phase="test", n=n)
    lab.workspace.reset(state["commit"])
    runs = [r for r in lab.ledger.runs(n) if r["metric"] is not None and lab.checkpoint(n, r["replicate"]).is_file()]
    saved = [str(lab.checkpoint(n, r["replicate"])) for r in runs]
    slot = lab.free_slot()  # the test's device and cores are a slot's: never a GPU a timed run is on
    res = pinned(slot.cpus, lambda: keep_test(prog, lab.workspace.path, [Path(p) for p in saved],
                                              lab.dir / "runs" / f"{n:04d}.test.log", lab.sandboxed,
                                              pid_file=lab.run_pid_file, protected=lab.protected_hashes,
                                              device=slot.env))  # fmt: skip
    lab.workspace.reset(state["commit"])
    lab.overhead.add("run", res.seconds)
    t = judge_test(prog, [r["metric"] for r in runs], res)
    lab.log.info("test", exp=n, models=len(saved), metric=t.metric, rescored=t.rescored, returncode=res.returncode,
                 seconds=round(res.seconds, 2), reason=t.reason, rejected=t.rejected)  # fmt: skip
    if n == 0 and (t.metric is None or t.rejected):  # on the unmodified target: the user's to fix
        raise InputError(prog.path, "test", f"on the baseline: {t.rejected or t.reason}")
    o["test_metric"] = t.metric  # why there is none (t.reason) is in the event log
    if t.rejected:
        lab.log.info("rejected", exp=n, stage="test", reason=t.rejected)
        o.update(status="rejected", violations=[t.rejected], reason=t.rejected)
    return Command(goto="record", update={"outcome": o})


def record(state: CampaignState, runtime: Runtime[Lab]) -> Command[Next]:
    """Ledger row first, then git, then results.tsv, then memory. Each step is idempotent."""
    lab = runtime.context
    n, o, p, commit = state["n"], state["outcome"], state["proposal"], state["commit"]
    ws = lab.workspace
    pending = rounds.pends(lab, n, o["status"])  # a fan-out round's keep: decided when the round ends
    parent = state["best_commit"] if n > 0 else (lab.base_commit if commit != lab.base_commit else "")
    row = dict(  # noqa: C408  (the ledger's column names, as keywords)
        n=n, commit=commit, parent=parent, metric=o["metric"], memory_gb=o["memory_gb"],
        status="pending" if pending else o["status"], description=p["description"], hypothesis=p["hypothesis"],
        role=p["role"], model=p["model"], cost_usd=lab.ledger.cycle_cost(n),
        seconds=sum(r["seconds"] or 0.0 for r in lab.ledger.runs(n)) or o["seconds"],
        knob_move=p["knob_move"] or "", log=o["log"],
        network=o.get("network", ""),  # .get: an outcome checkpointed before this field existed
        runs=o.get("runs", 1), sd=o.get("sd"), delta=o.get("delta"), confidence=o.get("confidence"),
        inconclusive=int(o.get("inconclusive", False)),
        test_metric=o.get("test_metric"),
        test_delta=lab.ledger.test_delta(state["best_commit"], o.get("test_metric")) if n else None,
    )  # fmt: skip
    lab.ledger.record_experiment(row)
    kept = o["status"] == "keep" and not pending
    if not kept:
        ws.reset(state["best_commit"])
    if lab.program.spec.test:  # saved models: only the best's (and a round's pending ones') are tested again
        lab.prune_checkpoints([n if kept else lab.ledger.kept_experiment(state["best_commit"]) or 0,
                               *rounds.keep_too(state), *([n] if pending else [])])  # fmt: skip
    lab.write_tsv()
    lab.recall.remember(row, ws.diff(parent, commit) if p["edits"] else None)
    lab.log.info("record", exp=n, status=row["status"], metric=o["metric"], commit=commit[:7],
                 description=p["description"])  # fmt: skip
    update: dict[str, Any] = {
        "n": n + 1, "proposal": None, "commit": None, "outcome": None, "fails_in_row": 0, "replicate": 0,
        "attempt": next_attempt(state), "prepared": None, "since_direct": state["since_direct"] + (n > 0),
        "since_keep": 0 if kept else state["since_keep"] + 1,
    }  # fmt: skip
    if kept:
        update.update(best_commit=commit, best_metric=o["metric"])
    if pending:
        update["pending"] = [*(state.get("pending") or []),
                             Candidate(n=n, commit=commit, metric=o["metric"], edits=bool(p["edits"]))]  # fmt: skip
    if n == 0:
        update.update(baseline_metric=o["metric"], since_keep=0)
    if o["status"] == "crash":
        update["feedback"] = [(f"crash: {p['description']}: exit {o['returncode']}, "
                               f"timed out {o['timed_out']}; {fence(o['tail'], 'output tail', 600)}")]  # fmt: skip
    elif o["status"] == "rejected":
        # capped: a line printed by code that saw val (an in-process scorer) could carry its text
        update["feedback"] = [f"rejected: {p['description']}: "
                              f"{fence('; '.join(o['violations']), 'why', VIOLATION_CHARS, keep='head')}"]
    elif o["status"] == "discard" and o.get("reason"):
        update["feedback"] = [f"discarded: {p['description']}: {o['reason']}"]
    if rounds.over(lab, state, n):  # the round's verdict: its best pending experiment is kept
        update = rounds.merged(update, rounds.close(lab, {**state, **update}))
    lab.progress(phase="record", n=n, status=o["status"], best=update.get("best_metric", state["best_metric"]),
                 keep_rate=keep_rate(lab.ledger.experiments()), spend=lab.ledger.total_cost(),
                 overhead=dict(lab.overhead))  # fmt: skip
    return _loop(state, lab, update, after_record=True)


def close_round(state: CampaignState, runtime: Runtime[Lab]) -> Command[Literal["__end__"]]:
    """The campaign stopped inside a fan-out round with a keep pending: the round's verdict on what
    it ran (org/rounds.py). A node of its own, so the decision to stop is checkpointed before the
    verdict's writes: a kill in between closes the same round the same way on resume."""
    lab = runtime.context
    return Command(goto=END, update=rounds.close(lab, state))


def rebaseline(state: CampaignState, runtime: Runtime[Lab]) -> Command[Next]:
    """Every `noise.rebaseline_every` experiments the best runs again with a new seed; drift (a
    result beyond 3 sigma of its record) re-measures it, and the fresh runs judge what follows
    (org/drift.py)."""
    lab = runtime.context
    n_done = state["n"] - 1
    lab.progress(phase="rebaseline", n=n_done)
    fresh_mean = check_drift(lab, state["best_commit"], n_done)
    update: dict[str, Any] = {"rebaselined": n_done}
    if fresh_mean is not None:
        update["best_metric"] = fresh_mean
    return _loop(state, lab, update, after_record=False)


def compact(state: CampaignState, runtime: Runtime[Lab]) -> Command[Literal["direct", "propose", "close_round", "__end__"]]:
    """Every K experiments the compactor distils the target's notes into lessons."""
    lab = runtime.context
    lab.progress(phase="compact", n=state["n"])
    n = state["n"]

    def summarize(notes: list[Any]) -> list[Any]:
        res = lab.calls.ask_words("compactor", n, Lessons, experiment=n,
                                  notes="\n".join(note.to_prompt() for note in notes))  # fmt: skip
        if res is None or res.value is None:  # a base model's turn, or a failure: memory's own grouping
            from memory.compaction import fallback_drafts

            return fallback_drafts(lab.memory, lab.recall.target, notes, noise_estimate(lab.ledger)[0])
        return [lesson.draft() for lesson in res.value.lessons]

    lessons = lab.memory.compact(lab.recall.target, summarize)
    lab.log.info("compact", exp=n, lessons=len(lessons))
    return _loop(state, lab, {}, after_record=False)


# ---- wiring ------------------------------------------------------------------------------------


def timed(name: str, fn: Any) -> Any:
    """Wrap a node to add its wall time to lab.overhead (for evals/bench_loop.py). `wraps` keeps
    the node's `Command[Literal[...]]` annotation, from which LangGraph draws its edges."""

    @functools.wraps(fn)
    def node(state: CampaignState, runtime: Runtime[Lab]) -> Any:
        with runtime.context.overhead.timing(name):
            return fn(state, runtime)

    return node


NODES = {"setup": setup, "direct": direct, "propose": propose, "apply": apply, "vet": vet_node, "run": run,
         "judge": judge, "test": test, "record": record, "close_round": close_round, "rebaseline": rebaseline,
         "compact": compact}  # fmt: skip


def build_graph() -> StateGraph:
    g = StateGraph(CampaignState, context_schema=Lab)
    for name, fn in NODES.items():
        g.add_node(name, timed(name, fn))
    g.add_edge(START, "setup")
    return g


DRAWING = """\
# The campaign graph

Drawn by LangGraph from `build_graph()` in `org/graph.py`: every node declares where it may go in
its `Command[Literal[...]]` return type, and each dotted edge is one of those routes. The baseline
runs once (setup, run, judge, record); then the loop is propose, apply, vet, run, judge, record,
with compact and direct on their cadence. A model-caused failure (no valid proposal, an edit that
does not apply, a vet rejection, a run failing inside its inline smoke window) goes to the round's
next candidate (apply), the director, the proposer, or the end when a stop rule is reached. A
campaign that stops inside a fan-out round with a keep pending ends through close_round, which
decides the round on what it ran. Resuming a finished campaign whose stop limit was raised re-enters at propose.

Regenerate with `make graph` (`python -m org.graph > docs/graph.md`); `tests/test_graph.py` fails
when this file is stale.
"""


def drawing() -> str:
    """docs/graph.md: the prose above and the graph as a Mermaid flowchart."""
    mermaid = build_graph().compile().get_graph().draw_mermaid()
    return f"{DRAWING}\n```mermaid\n{mermaid.rstrip()}\n```\n"


if __name__ == "__main__":
    print(drawing(), end="")
