"""Fan-out rounds: W experiments from one parent, and the best confirmed one is kept.

With a program's `fan_out` W > 1, experiments come in rounds of W experiment numbers. The best
does not move inside a round: every experiment of it is judged against the best the round began
on, by the same keep rule (measured noise, confirmation replicates, the held-out test beside it).
One that passes is recorded `pending`. When the round's last experiment is recorded (or the
campaign stops, or the search from the parent is spent) the round closes: the pending experiment
with the best mean becomes the `keep` and the branch moves to it (its parent is the round's, so
the branch stays linear); every other pending one is `beaten`. Memory notes those as changes that
helped (evidence for a lesson, never a blocked repeat), so each may be tried again on the new best,
where it is a new experiment. With W slots a round's runs go side by side (the pipeline prepares
them on the parent, org/ahead.py): none of them is thrown away by another's keep.

W = 1 (the default) is the sequential rule: a keep moves the best at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from org.prompts import fmt_metric
from org.state import CampaignState, Candidate

if TYPE_CHECKING:
    from org.lab import Lab


def pends(lab: Lab, n: int, status: str) -> bool:
    """Does experiment `n`'s keep wait for the end of its round?"""
    return status == "keep" and n > 0 and lab.program.spec.fan_out > 1


def over(lab: Lab, state: CampaignState | dict[str, Any], n: int) -> bool:
    """Was experiment `n` the last of its fan-out round?"""
    fan_out = lab.program.spec.fan_out
    return fan_out > 1 and n > 0 and n - state.get("round_start", 1) + 1 >= fan_out


def last(lab: Lab, state: CampaignState | dict[str, Any]) -> int | None:
    """The round's last experiment (None without fan-out). The pipeline starts no first run past
    it: the next round's parent is not known until the round closes, and a keep in it moves the
    best (a run made on the old one would be thrown away). Its first experiment runs when the
    round opens, and the others on the other slots beside it."""
    if lab.program.spec.fan_out == 1:
        return None
    return state.get("round_start", 1) + lab.program.spec.fan_out - 1


def keep_too(state: CampaignState | dict[str, Any]) -> list[int]:
    """Experiments whose saved models must outlive a prune: the pending ones (one will be the keep)."""
    return [c["n"] for c in state.get("pending") or []]


def close(lab: Lab, state: CampaignState | dict[str, Any]) -> dict[str, Any]:
    """The round's verdict, as a state update: its best pending experiment kept, the others beaten,
    memory told of all of them; the next round begins at `state["n"]` (the next experiment).
    Idempotent: a kill after any step closes the same round the same way when it runs again."""
    pending: list[Candidate] = list(state.get("pending") or [])
    first = state.get("round_start", 1)
    update: dict[str, Any] = {"pending": [], "round_start": state["n"]}
    if state["n"] <= first:  # no experiment since the last round closed
        return update
    if not pending:
        lab.log.info("round", first=first, last=state["n"] - 1, kept=None, beaten=[], metric=None)
        return update
    program = lab.program
    best = min if program.spec.direction == "min" else max
    winner = best(pending, key=lambda c: c["metric"])  # the best mean; a tie goes to the earlier
    lab.ledger.set_status(winner["n"], "keep")
    beaten = [c for c in pending if c is not winner]
    for c in beaten:
        lab.ledger.set_status(c["n"], "beaten")
    lab.workspace.reset(winner["commit"])
    for c in pending:  # memory's notes, with the round's verdicts
        row = lab.ledger.experiment(c["n"])
        lab.recall.remember(row, lab.workspace.diff(row["parent"], row["commit"]) if c.get("edits") else None)
    if program.spec.test:
        lab.prune_checkpoints([winner["n"]])
    lab.write_tsv()
    metric = program.spec.metric
    lab.log.info("round", first=first, last=state["n"] - 1, kept=winner["n"],
                 beaten=[c["n"] for c in beaten], metric=winner["metric"])  # fmt: skip
    described = {c["n"]: lab.ledger.experiment(c["n"])["description"] for c in pending}
    feedback = [f"beaten in its round: {described[c['n']]}: it beat the parent ({metric} {fmt_metric(c['metric'])}), "
                f"but {described[winner['n']]} did more ({fmt_metric(winner['metric'])}) and was kept; it is not "
                "in the best, and may be tried on it" for c in beaten]  # fmt: skip
    update.update(best_commit=winner["commit"], best_metric=winner["metric"], since_keep=0)
    if feedback:
        update["feedback"] = feedback
    return update



def merged(update: dict[str, Any], closed: dict[str, Any]) -> dict[str, Any]:
    """`update` and a round's close, their feedback lines together (an empty list would clear them)."""
    feedback = [*update.get("feedback", []), *closed.get("feedback", [])]
    return {**update, **closed, **({"feedback": feedback} if feedback else {})}
