"""A proposal's screening before any run is spent: the vet gates with the campaign's own duplicate
check (ledger and memory) and peer review (org/review.py), in a worktree of the caller's choice:
the campaign's, or the pipeline's (org/ahead.py), where the next proposals are vetted while a
run trains."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from org.errors import ModelError
from org.prompts import fmt_metric
from org.review import advisory_only, fail_open, review_change
from org.state import Proposal
from org.vet import GateResult, Verdict, VetInput, reject, vet
from org.workspace import Workspace

if TYPE_CHECKING:
    from org.lab import Lab


def screen(lab: Lab, ws: Workspace, p: Proposal, n: int, attempt: int, best_commit: str, best_metric: float | None,
           also_duplicate: Callable[[str], str | None] = lambda _commit: None) -> Verdict:  # fmt: skip
    """Vet `p`, committed at `ws`'s HEAD on `best_commit`, for experiment `n`. `also_duplicate`
    (given the commit) names an experiment in flight it repeats, when there is one."""
    v = VetInput(workspace=ws, program=lab.program, best_commit=best_commit, protected_hashes=lab.protected_hashes,
                 hypothesis=p["hypothesis"], knob_move=p["knob_move"], log_dir=lab.dir / "runs" / f"vet-{attempt:04d}",
                 sandboxed=lab.sandboxed)  # fmt: skip

    def duplicate(v: VetInput) -> GateResult | None:
        head = v.workspace.head()
        return reject(also_duplicate(head) or lab.recall.repeat(p, v.diff, commit=head))

    def review(v: VetInput) -> GateResult | None:
        primary = lab.org.roles["reviewer"].spec.model
        try:
            first = lab.calls.first_choice("reviewer")
        except ModelError as e:
            return fail_open(e)
        if skipped := advisory_only(primary, first):
            return skipped
        result = review_change(lab.calls.ask_words, n, p["hypothesis"], p["description"], v.diff, fmt_metric(best_metric),
                               lab.recall.context(p["hypothesis"], 600), primary_model=primary)  # fmt: skip
        if result is not None and result.advisory:
            lab.log.info("review_advisory", exp=n, model=result.model, reason=result.reason)
        return result

    use_review = lab.org.spec.review and "reviewer" in lab.org.roles
    return vet(v, duplicate=duplicate, review=review if use_review else None,
               smoke=lab.program.spec.smoke_inline_s is None)  # inline: `run` is the smoke run
