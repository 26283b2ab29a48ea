"""LLM peer-review gate: the org's `reviewer` role reads the diff, the hypothesis and notes.

Policy: fail CLOSED when the reviewer answers but gives no valid verdict (the change is rejected
and the reason recorded), fail OPEN only when the reviewer model is unavailable (transport
failure of primary and fallback, `ModelError`): the change proceeds and the gate records a
warning. The other gates, the smoke run and the sandbox still stand between it and the run.
The reviewer's fallback model only advises (its rejections are logged, not enforced), so it is
not asked at all when the client knows in advance that the primary cannot answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from org.errors import ModelError
from org.prompts import Review
from org.untrusted import neutralise


class Pass(str):
    """A gate result meaning: passed, with this warning recorded."""


def advisory_only(primary_model: str, first_choice: str) -> Pass | None:
    """A Pass when the client already knows the reviewer's fallback would answer (the primary has
    no key or is cooling down after an outage): its verdict could only advise, so asking it is
    seconds of a local model per proposal that cannot change the outcome."""
    if first_choice == primary_model:
        return None
    return Pass(f"reviewer {primary_model} unavailable and fallback {first_choice} could only "
                "advise, so the change was not reviewed (fail-open)")


def review_change(call: Callable[..., Any], experiment: int, hypothesis: str, description: str,
                  diff: str, best_metric: str, memory: str, primary_model: str | None = None) -> str | None:  # fmt: skip
    """`call(kind, n, schema, **variables)` as `Lab.call`. Returns a rejection, a Pass or None.

    A rejection from the reviewer's *fallback* model (not the judge the org author chose, often
    a 270M base model) only advises: it comes back as a Pass carrying the reason."""
    try:
        res = call("reviewer", experiment, Review, experiment=experiment,
                   hypothesis=neutralise(hypothesis, 600, keep="head"),
                   description=neutralise(description, 300, keep="head"),
                   diff=neutralise(diff, 6000, keep="head"), best_metric=best_metric,
                   memory=neutralise(memory, 3000, keep="head"))  # fmt: skip
    except ModelError as e:
        return Pass(f"reviewer unavailable, change not reviewed (fail-open): {e}")
    if res.value is None:
        return f"peer reviewer gave no valid verdict ({res.record.error}); rejected (fail-closed)"
    verdict: Review = res.value
    if verdict.approve:
        return None
    reason = neutralise(verdict.reason, 300, keep="head")
    if primary_model is not None and res.record.model_used != primary_model:
        return Pass(f"advisory rejection from fallback reviewer {res.record.model_used}: {reason}")
    return f"peer review: {reason}"
