"""The pipeline: while a run trains, the org proposes and vets the experiments after it.

With a program's `pipeline_depth` N > 0 the run node starts the target in a thread, and while it
trains this prepares up to N next proposals in a worktree of their own (`ahead/` in the campaign
directory): each is asked of the proposer as the propose node would ask it (at the same best
commit, told what is in flight), committed there on the best, and vetted there by every gate, the
smoke run and the peer review included. When the run ends, the next experiment's proposal is
ready: the GPU does not wait for a model.

A prepared proposal is used as it is while the best it was made on is still the best. After a keep
it is rebased: applied again on the new best (a knob move moves from the new value) and vetted
again; one that no longer applies is dropped, and the ledger says so. A new directive drops them
all (they were made under the old one). What a model got wrong is recorded as it would be in
line. What is prepared is checkpointed with the run node's result: a kill loses the preparation
of the run in flight only, and the resumed run asks again (a sampler gets the same trials back).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from org import rounds
from org.errors import InputError
from org.proposer import Asking, candidates, commit_proposal
from org.sandbox import SandboxResult
from org.screening import screen
from org.slots import Running, worktree
from org.state import CampaignState, Prepared, next_attempt
from org.verdict import seed_run
from org.workspace import Workspace, git

if TYPE_CHECKING:
    from org.lab import Lab

AHEAD_DIR = "ahead"  # the pipeline's worktree, in the campaign directory


def workspace(lab: Lab) -> Workspace:
    """The pipeline's worktree (detached, on the campaign's repo), made on first use."""
    return worktree(lab.program, lab.dir / AHEAD_DIR, lab.workspace)


def depth_of(lab: Lab) -> int:
    """Proposals kept ready: the program's `pipeline_depth`, and at least one per slot beyond the
    first (each can run one's first run)."""
    return max(lab.program.spec.pipeline_depth, len(lab.slots) - 1)


def room(lab: Lab, state: CampaignState) -> bool:
    """Is there a proposal to prepare while experiment n runs? Never past the last experiment the
    campaign may run. During the baseline too (its commit is the best, whatever it scores), unless
    a director will speak before experiment 1: what was made before its first directive is dropped."""
    depth = depth_of(lab)
    nxt = state["n"] + 1 + len(state.get("ahead") or [])
    cap = lab.stop.max_experiments
    if not depth or not state["best_commit"] or (state["n"] == 0 and lab.calls.speaks("director")):
        return False
    return len(state.get("ahead") or []) < depth and (cap is None or nxt <= cap)


def fingerprint(lab: Lab) -> str:
    """What a vet verdict depends on besides the change: the program file, the org's role files,
    the protected files' hashes and the gates' own code. A prepared proposal whose fingerprint is
    not the campaign's now (a resume after any of them changed) is vetted again."""
    import org.rules
    import org.vet

    h = hashlib.sha256()
    for path in [lab.program.path, *sorted(lab.org.path.glob("*.md")), Path(org.rules.__file__), Path(org.vet.__file__)]:
        h.update(path.read_bytes())
    h.update(json.dumps(lab.protected_hashes, sort_keys=True).encode())
    return h.hexdigest()[:16]


def flying(state: CampaignState, besides: str | None = None) -> dict[str, int]:
    """Commits not judged yet -> their experiment: the one in flight (when it is not `besides`) and
    every proposal ready on the current best."""
    commits = {r["commit"]: r["n"] for r in state.get("ahead") or [] if r["parent"] == state["best_commit"]}
    if state.get("commit") and state["commit"] != besides:
        commits[state["commit"]] = state["n"]
    commits.pop(besides, None)
    return commits


def in_flight(lab: Lab, state: CampaignState, besides: str | None = None) -> Callable[[str], str | None]:
    """A duplicate check against experiments not judged yet: the one in flight (when it is not
    `besides`) and every proposal ready on the current best. Same tree, same files: a second run
    of them is a second noisy draw, never a new experiment."""
    commits = flying(state, besides)
    ws = lab.workspace
    trees = {git(ws.path, "rev-parse", f"{c}^{{tree}}"): m for c, m in commits.items()}

    def check(commit: str) -> str | None:
        m = trees.get(git(ws.path, "rev-parse", f"{commit}^{{tree}}"))
        return None if m is None else f"repeats experiment {m}, in flight (not judged yet)"

    return check


def prepare(lab: Lab, state: CampaignState, running: Future) -> dict[str, Any]:
    """Prepare proposals until `pipeline_depth` are ready or `running` is done. The state update:
    `ahead` (what is ready, oldest first), `ahead_attempt` (the last attempt number it used), the
    proposer's `feedback` and `ahead_fails` (its failures here in a row: the stop rule counts them)."""
    attempt, feedback, failures, asked = next_attempt(state), [], 0, False
    in_row = state.get("ahead_fails", 0)  # the proposer's failures ahead since its last good proposal
    ws = workspace(lab)
    ready: list[Prepared] = []
    for item in state.get("ahead") or []:  # made on an older best: made again on this one, now
        made = item if item["parent"] == state["best_commit"] else _rebased(lab, ws, item, {**state, "ahead": ready})
        if isinstance(made, str):
            feedback.append(made)
            failures, in_row = failures + 1, in_row + 1
        elif made is not None:
            ready.append(made)
    speculate(lab, state, ready)
    while (room(lab, {**state, "ahead": ready}) and not running.done() and failures <= depth_of(lab)
           and in_row < lab.stop.max_failures_in_row):  # fmt: skip
        n = state["n"] + 1 + len(ready)
        told = [f"in flight, not judged yet: experiment {state['n']}: {state['proposal']['description']}"] + \
               [f"in flight, not judged yet: experiment {r['n']}: {r['proposal']['description']}" for r in ready]  # fmt: skip
        asking = Asking(n, attempt, state["best_commit"], state["best_metric"], state["baseline_metric"],
                        state["directive"], (*state["feedback"], *feedback, *told),
                        pending=frozenset(range(state["n"], n)),
                        flying=frozenset(flying({**state, "ahead": ready})))  # fmt: skip
        proposals, why, exhausted = candidates(lab, asking)
        asked = True
        if exhausted:  # nothing new from this best until a verdict: not the proposer's failure
            lab.log.info("ahead_exhausted", exp=n, reason=why[0])
            break
        if not proposals:
            feedback.append(_fail(lab, attempt, n, "propose", "; ".join(dict.fromkeys(why)), None))
            attempt, failures, in_row = attempt + 1, failures + 1, in_row + 1
            continue
        for p in proposals:
            made = _vetted(lab, ws, p, n, attempt, {**state, "ahead": ready})
            attempt += 1
            if isinstance(made, str):
                feedback.append(made)
                failures, in_row = failures + 1, in_row + 1
                continue
            ready.append(made)
            in_row = 0
            speculate(lab, state, ready)
            lab.log.info("ahead", exp=n, description=made["proposal"]["description"], ready=len(ready))
            break
    update = {"ahead": ready, "ahead_attempt": attempt - 1, "ahead_fails": in_row}
    if feedback or asked:  # (an empty list clears what the proposer was just shown; none asked: kept)
        update["feedback"] = feedback
    return update


def behind(state: CampaignState) -> bool:
    """Is a proposal ready on an older best (a keep since), to be rebased while the next run trains?"""
    return any(r["parent"] != state["best_commit"] for r in state.get("ahead") or [])


def _rebased(lab: Lab, ws: Workspace, item: Prepared, state: CampaignState) -> Prepared | str | None:
    """A proposal ready on an older best, applied again on the best (a knob move moves from the new
    value) and vetted again; None when it no longer applies (dropped, and recorded: not the model's
    failure); or the feedback line of a vet that refused it now."""
    p, n, attempt = item["proposal"], item["n"], item["attempt"]
    try:
        p = commit_proposal(lab, ws, p, n, state["best_commit"])
    except (InputError, ValueError, KeyError) as e:
        dropped(lab, n, attempt, p, item["parent"], e)
        return None
    lab.log.info("ahead_rebased", exp=n, description=p["description"], parent=item["parent"][:7], ahead=True)
    return _screened(lab, ws, p, n, attempt, state)


def dropped(lab: Lab, n: int, attempt: int, p: Any, parent: str, error: Exception) -> None:
    """A proposal made on an older best that no longer applies on the best: recorded (stage
    `rebase`), not held against the proposer."""
    reason = f"made on {parent[:7]}, it no longer applies on the new best: {error}"
    lab.ledger.record_failure(f"{attempt}:rebase", n, "rebase", reason, p.get("hypothesis", ""), p.get("role", ""),
                              p.get("model", ""))  # fmt: skip
    lab.log.info("ahead_dropped", exp=n, description=p.get("description", ""), reason=reason)


def _vetted(lab: Lab, ws: Workspace, p: Any, n: int, attempt: int, state: CampaignState) -> Prepared | str:
    """`p` committed and vetted in the pipeline's worktree; or the feedback line of its failure."""
    try:
        p = commit_proposal(lab, ws, p, n, state["best_commit"])
    except (InputError, ValueError, KeyError) as e:
        return _fail(lab, attempt, n, "apply", str(e), p)
    return _screened(lab, ws, p, n, attempt, state)


def _screened(lab: Lab, ws: Workspace, p: Any, n: int, attempt: int, state: CampaignState) -> Prepared | str:
    """`p`, committed on the best in the pipeline's worktree, vetted by every gate."""
    verdict = screen(lab, ws, p, n, attempt, state["best_commit"], state["best_metric"], in_flight(lab, state))
    for g in verdict.records:
        lab.ledger.record_gate(n, attempt, g.gate, g.ok, g.reason, g.seconds)
    if not verdict.ok:
        return _fail(lab, attempt, n, f"vet:{verdict.gate}", verdict.reason, p)
    return Prepared(proposal=p, parent=state["best_commit"], commit=ws.head(), n=n, attempt=attempt,
                    fingerprint=fingerprint(lab))  # fmt: skip


def _fail(lab: Lab, attempt: int, n: int, stage: str, reason: str, p: Any) -> str:
    """Record a model-caused failure of a proposal made ahead; the proposer's feedback line."""
    p = p or {}
    lab.ledger.record_failure(f"{attempt}:{stage}", n, stage, reason, p.get("hypothesis", ""), p.get("role", ""),
                              p.get("model", ""))  # fmt: skip
    lab.log.info("rejected", exp=n, stage=stage, reason=reason, ahead=True)
    return f"{stage}: {p.get('description') or 'your proposal'}: {reason}"


# ---- the other slots (org/slots.py) --------------------------------------------------------------


def speculate(lab: Lab, state: CampaignState, ready: list[Prepared]) -> None:
    """Start the first run of each proposal ready on the current best on a free slot: when its
    experiment comes (the best unchanged), the run is its first (`adopt`). After a keep it is
    rebased, and its run here is not used. Never past the end of a fan-out round (org/rounds.py)."""
    best, last = state["best_commit"], rounds.last(lab, state)
    for i, item in enumerate(ready):
        free = lab.free_slots()
        if not free or (last is not None and state["n"] + 1 + i > last):
            return
        if item["parent"] != best or item["commit"] in lab.speculative:
            continue
        slot = free[0]
        slot.workspace.reset(item["commit"])
        seeding = seed_run(lab.program, slot.workspace, 0)
        log = lab.dir / "runs" / f"ahead-{item['commit'][:12]}.log"
        running = lab.launch(slot, item["commit"], item["n"], dict(seeding.env), log, log.with_suffix(".pt"))
        running.epoch = state.get("rebaselined", 0)
        lab.speculative[item["commit"]] = running
        lab.log.info("ahead_run", exp=item["n"], slot=slot.index, commit=item["commit"][:7])


def adoptable(lab: Lab, state: CampaignState) -> Running | None:
    """The first run of the experiment in flight, if a free slot already started it (at this very
    commit, seeded as a first run is, with no drift check since)."""
    running = lab.speculative.get(state["commit"])
    if running is None or running.epoch != state.get("rebaselined", 0):
        return None
    return running


def adopt(lab: Lab, state: CampaignState, running: Running) -> SandboxResult:
    """That run's result, once it is done: its log and saved model moved to where the experiment's
    first run keeps them."""
    n = state["n"]
    del lab.speculative[state["commit"]]
    res = lab.finish(running)
    log, saved = lab.run_log(n, 0), lab.checkpoint(n, 0)
    if running.log.exists():
        running.log.replace(log)
    if running.saved.exists():
        running.saved.replace(saved)
    lab.log.info("ahead_run_used", exp=n, slot=running.slot.index, seconds=round(res.seconds, 2))
    return replace(res, log_path=log)


def stale(lab: Lab, state: CampaignState) -> None:
    """Forget finished first runs of proposals no longer ready on the best (a keep rebased them)."""
    wanted = {state.get("commit")} | {i["commit"] for i in state.get("ahead") or [] if i["parent"] == state["best_commit"]}
    epoch = state.get("rebaselined", 0)
    for commit, running in list(lab.speculative.items()):
        if (commit not in wanted or running.epoch != epoch) and running.future.done():
            del lab.speculative[commit]
            res = lab.finish(running)
            lab.log.info("ahead_run_unused", commit=commit[:7], seconds=round(res.seconds, 2),
                         reason="made on an older best" if commit not in wanted else "a drift check since")  # fmt: skip
            running.saved.unlink(missing_ok=True)


def replicates(lab: Lab, state: CampaignState, first: int) -> list[tuple[int, Any, Running]]:
    """Replicates `first`+1, ... of the experiment in flight, started side by side on free slots
    (as many as the rule may still ask for): (replicate, its seeding, its run)."""
    spec, n = lab.program.spec, state["n"]
    if not spec.noise.replicated:
        return []
    if n == 0:
        last = spec.noise.baseline_runs - 1
    elif first == 0:  # a first run that is clearly worse stops there: no replicate before it is judged
        return []
    else:
        last = spec.noise.max_replicates
    started = []
    for slot, r in zip(lab.free_slots(), range(first + 1, last + 1), strict=False):
        slot.workspace.reset(state["commit"])
        seeding = seed_run(lab.program, slot.workspace, r)
        if seeding.seed is None:
            break
        started.append((r, seeding, lab.launch(slot, state["commit"], n, dict(seeding.env), lab.run_log(n, r),
                                               lab.checkpoint(n, r))))  # fmt: skip
    return started
