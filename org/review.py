"""LLM peer-review gate: the org's `reviewer` role reads the diff, the hypothesis and notes.

Policy: fail CLOSED when the reviewer answers but gives no valid verdict (the change is rejected
and the reason recorded), fail OPEN only when the reviewer model is unavailable (transport
failure of primary and fallback, `ModelError`): the change proceeds and the gate records a
warning. The other gates, the smoke run and the sandbox still stand between it and the run.
The reviewer's fallback model only advises (its rejections are logged, not enforced), so it is
not asked at all when the client knows in advance that the primary cannot answer. An embedded
base model is not asked at all (`Calls.ask_words`): the change goes on unreviewed, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from org.errors import ModelError
from org.prompts import Review
from org.untrusted import neutralise
from org.vet import GateResult, reject, warn


def fail_open(e: ModelError) -> GateResult:
    """The reviewer model is unavailable: the change proceeds unreviewed, with a warning."""
    return warn(f"reviewer unavailable, change not reviewed (fail-open): {e}")


def advisory_only(primary_model: str, first_choice: str) -> GateResult | None:
    """A pass with a warning when the client already knows the reviewer's fallback would answer
    (the primary has no key or is cooling down after an outage): its verdict could only advise, so
    asking it is seconds of a local model per proposal that cannot change the outcome."""
    if first_choice == primary_model:
        return None
    return warn(f"reviewer {primary_model} unavailable and fallback {first_choice} could only "
                "advise, so the change was not reviewed (fail-open)")


def review_change(call: Callable[..., Any], experiment: int, hypothesis: str, description: str,
                  diff: str, best_metric: str, memory: str, primary_model: str | None = None) -> GateResult | None:  # fmt: skip
    """`call(kind, n, schema, **variables)` as `Calls.ask_words` (None: an embedded base model's
    turn). None is an approval.

    A rejection from the reviewer's *fallback* model (not the judge the org author chose) only
    advises: it comes back as an advisory pass naming the model."""
    try:
        res = call("reviewer", experiment, Review, experiment=experiment,
                   hypothesis=neutralise(hypothesis, 600, keep="head"),
                   description=neutralise(description, 300, keep="head"),
                   diff=neutralise(diff, 6000, keep="head"), best_metric=best_metric,
                   memory=neutralise(memory, 3000, keep="head"))  # fmt: skip
    except ModelError as e:
        return fail_open(e)
    if res is None:
        return warn("the reviewer's model is an embedded base model, whose verdict is valid JSON but no "
                    "judgement, so the change was not reviewed (fail-open)")
    if res.value is None:
        return reject(f"peer reviewer gave no valid verdict ({res.record.error}); rejected (fail-closed)")
    verdict: Review = res.value
    if verdict.approve:
        return None
    reason = neutralise(verdict.reason, 300, keep="head")
    if primary_model is not None and res.record.model_used != primary_model:
        return GateResult(ok=True, reason=reason, advisory=True, model=res.record.model_used)
    return reject(f"peer review: {reason}")
