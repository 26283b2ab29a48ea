"""Campaign graph state. Checkpointed by SqliteSaver after every node, so it stays small and plain.

Reducers are explicit: every field is `Annotated` with how an update combines with the old value.
Big things (run logs, file contents) live on disk or in the ledger, never in the state.
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, TypedDict

FEEDBACK_KEEP = 6  # model-caused errors shown to the proposer: the most recent few


def replace(_old: Any, new: Any) -> Any:
    """Last write wins."""
    return new


def add_feedback(old: list[str] | None, new: list[str] | None) -> list[str]:
    """Append model-caused errors, keep the latest few. An empty list clears them."""
    if not new:
        return []
    return ((old or []) + new)[-FEEDBACK_KEEP:]


class Proposal(TypedDict):
    hypothesis: str
    description: str  # one line for results.tsv and the commit message
    role: str  # role kind that produced it ("baseline" for the unmodified run)
    model: str  # model that actually answered
    knob_move: str | None  # "DEPTH x2" in knob mode
    edits: list[dict[str, str]] | None  # search/replace blocks in edit mode
    knob_values: NotRequired[dict[str, Any] | None]  # a sampler's trial: every knob of its space, set


class Prepared(TypedDict):
    """A proposal the pipeline made and vetted while a run trained (org/ahead.py)."""

    proposal: Proposal  # as applied (a knob move's description names its values)
    parent: str  # the best commit it was committed on and vetted against
    commit: str  # its commit on `parent`
    n: int  # the experiment it was made for (its gates are recorded under it)
    attempt: int  # its proposal attempt (its gates' and failures' key)
    fingerprint: NotRequired[str]  # what its vet depended on (org/ahead.py: `fingerprint`)


class Candidate(TypedDict):
    """An experiment of a fan-out round that passed the keep rule: pending until the round ends
    (org/rounds.py)."""

    n: int
    commit: str
    metric: float
    edits: NotRequired[bool]  # an edit-mode change: memory keeps its diff


class Outcome(TypedDict):
    returncode: int | None
    timed_out: bool
    seconds: float
    metric: float | None
    memory_gb: float
    status: str  # keep | discard | crash | rejected (set by judge); pending | beaten (org/rounds.py)
    log: str  # path of the run log
    tail: str  # last lines of output, for the proposer's feedback on a crash
    violations: list[str]  # sandbox findings; any => status "rejected"
    network: str  # "isolated (netns)" or "not isolated: <why>" (recorded in the ledger)
    # set by judge over all of the experiment's runs (metric is then their mean)
    runs: NotRequired[int]
    sd: NotRequired[float | None]
    delta: NotRequired[float | None]  # vs the parent (the best when the experiment began)
    confidence: NotRequired[float | None]
    inconclusive: NotRequired[bool]
    reason: NotRequired[str]
    test_metric: NotRequired[float | None]  # set by test, for keeps of a program with a test command


class CampaignState(TypedDict, total=False):
    n: Annotated[int, replace]  # experiment number in flight; 0 is the baseline
    attempt: Annotated[int, replace]  # proposal attempts so far (keys failure records)
    best_commit: Annotated[str, replace]
    best_metric: Annotated[float | None, replace]
    baseline_metric: Annotated[float | None, replace]
    since_keep: Annotated[int, replace]  # experiments since the last keep (plateau detector)
    since_direct: Annotated[int, replace]  # experiments since the director last spoke
    fails_in_row: Annotated[int, replace]  # proposals in a row that never reached a run
    directive: Annotated[str, replace]  # the director's current guidance for proposers
    feedback: Annotated[list[str], add_feedback]
    proposal: Annotated[Proposal | None, replace]
    queue: Annotated[list[Proposal], replace]  # more candidates of this round (proposals_per_round)
    commit: Annotated[str | None, replace]  # experiment commit under test
    replicate: Annotated[int, replace]  # which run of the experiment is in flight (0: the first)
    rebaselined: Annotated[int, replace]  # experiments done when the best was last re-run (drift)
    outcome: Annotated[Outcome | None, replace]
    ahead: Annotated[list[Prepared], replace]  # proposals the pipeline has ready, oldest first
    prepared: Annotated[Prepared | None, replace]  # the one in use: its vet is done unless rebased
    ahead_attempt: Annotated[int, replace]  # the last proposal attempt the pipeline used (-1: none)
    ahead_fails: Annotated[int, replace]  # the pipeline's proposals in a row that failed (stop rule)
    round_start: Annotated[int, replace]  # the first experiment of the fan-out round (org/rounds.py)
    pending: Annotated[list[Candidate], replace]  # its experiments that passed the keep rule
    stopped: Annotated[str | None, replace]  # why the campaign ended


def initial_state() -> CampaignState:
    return CampaignState(
        n=0, attempt=0, best_commit="", best_metric=None, baseline_metric=None, since_keep=0,
        since_direct=0, fails_in_row=0, directive="", feedback=[], proposal=None, queue=[], commit=None,
        replicate=0, rebaselined=0, outcome=None, ahead=[], prepared=None, ahead_attempt=-1, ahead_fails=0,
        round_start=1, pending=[], stopped=None,
    )  # fmt: skip


def next_attempt(state: CampaignState | dict[str, Any]) -> int:
    """The next free proposal attempt number: past the one in flight and every one the pipeline used."""
    return max(state["attempt"], state.get("ahead_attempt", -1)) + 1


def rebaseline_due(state: CampaignState | dict[str, Any], program: Any) -> bool:
    """Is the best due a drift check before the next experiment (`noise.rebaseline_every` since the last)?
    Not while a fan-out round has a keep pending: its candidates are compared with one another on
    the runs of the parent they were judged against (it is due again once the round closes)."""
    noise, n_done = program.spec.noise, state["n"] - 1
    return bool(noise.rebaseline_every and noise.replicated and n_done > 0 and not state.get("pending")
                and n_done - state.get("rebaselined", 0) >= noise.rebaseline_every)  # fmt: skip


def on_plateau(state: CampaignState | dict[str, Any], plateau_after: int) -> bool:
    """Every `plateau_after`-th experiment in a row without a keep calls the director, whatever its
    cadence, unless it has spoken since that experiment (so a failed proposal does not re-call it)."""
    streak = state["since_keep"]
    return streak > 0 and streak % plateau_after == 0 and state["since_direct"] > 0
