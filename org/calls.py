"""Model calls: render a role's system prompt, ask the model client, record the call.

The client is injected (`org.models.ModelClient` in a campaign, a scripted double in tests). Every
call, answered or not, goes to the ledger's calls table and the event log; its time counts as
"llm" in the overhead.

Before each call the spend caps are checked against the most the call could cost (the client's
`estimate`: every attempt sending the prompt and getting `max_tokens` back): the program's total
(`stop.max_usd`, `stop.max_tokens`) stops the campaign (`SpendCapReached`); a role's own
(`cap_usd`, `cap_tokens`) makes it answer with its local fallback, or stops. Failed calls count.
An outage of every model a role may use (`ModelError`: the client's retries and fallback spent)
does not end the campaign: the call is recorded as failed and tried again after a wait that
doubles (`outage_wait_s` .. 10 min), until it answers, `max_outage_s` pass, or the night's window
would close; the report shows how long each role was degraded.

An embedded base model is never asked for words someone acts on (`ask_words`: the director's
directive, the compactor's lessons, the reviewer's verdict). A grammar makes its JSON valid, not
its content: offline, the 270M model's "directive" read `1 Avoid: 1`, its assessment `a`, and its
review reasons `test_small_small_small…`. Such a role is skipped (its caller has a deterministic
path: no new direction, memory's own grouping of the notes, an unreviewed change), and an answer
that came from one anyway (a primary failing over mid-call) is recorded as a call and not used.
A base model may still pick from a closed list (the knob-mode proposer), where its text is not kept.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from org.errors import ModelError, SpendCapReached
from org.ledger import Ledger
from org.models.names import parse_model
from org.models.records import CallRecord
from org.overhead import Overhead
from org.program import Program, StopSpec
from org.prompts import VARIABLES, messages, noise_line
from org.roles import Org
from org.settings import outage_wait_s
from org.verdict import noise_estimate


def _forget_outages() -> None:
    from org.models.client import forget_outages

    forget_outages()


class StructuredClient(Protocol):
    """What the graph needs from `org.models.ModelClient` (any compatible object will do)."""

    def structured(self, role: Any, messages: list[dict], schema: type[BaseModel]) -> Any: ...

    def first_choice(self, role: Any) -> str: ...

    def estimate(self, role: Any, messages: list[dict]) -> tuple[float, int]: ...


@dataclass
class Calls:
    program: Program
    org: Org
    models: StructuredClient
    ledger: Ledger
    log: Any  # the campaign's structlog logger
    overhead: Overhead
    stop: StopSpec = dataclasses.field(default_factory=StopSpec)
    outage_wait_s: float = dataclasses.field(default_factory=lambda: outage_wait_s())  # the first wait
    max_outage_s: float = 3 * 3600.0  # then the campaign gives up (ModelError)

    def variables(self, **overrides: Any) -> dict[str, Any]:
        """All template variables (see org.prompts.VARIABLES) with neutral defaults."""
        base: dict[str, Any] = {name: "" for name in VARIABLES}
        base.update(
            program_name=self.program.spec.name, strategy=self.program.strategy,
            metric=self.program.spec.metric, editable=self.program.editable_paths,
            direction="lower" if self.program.spec.direction == "min" else "higher",
            feedback=[], files={}, noise=self.noise(),
        )  # fmt: skip
        base.update(overrides)
        return base

    def noise(self) -> str:
        sigma, df = noise_estimate(self.ledger)
        noise = self.program.spec.noise
        return noise_line(sigma, df, noise.confidence, noise.replicated)

    def ask(self, kind: str, n: int, schema: type[BaseModel], **variables: Any) -> Any:
        """One structured call for role `kind`; the call record goes to the ledger either way."""
        return self._ask(kind, n, schema, variables, words=False)

    def ask_words(self, kind: str, n: int, schema: type[BaseModel], **variables: Any) -> Any | None:
        """`ask`, for a role whose answer is read as words; None when an embedded base model would
        answer (not asked: the primary unavailable, or a spend cap sending the call to its
        fallback) or did (a failover mid-call: recorded, not used, valid or not)."""
        result = self._ask(kind, n, schema, variables, words=True)
        if result is not None and parse_model(result.record.model_used).is_base:
            self.log.info("answer_unused", role=kind, exp=n, model=result.record.model_used,
                          why="an embedded base model answered")  # fmt: skip
            return None
        return result

    def _ask(self, kind: str, n: int, schema: type[BaseModel], variables: dict[str, Any], words: bool) -> Any:
        role = self.org.roles[kind]
        system = role.render(**self.variables(**variables))
        msgs = messages(system, kind, n)
        waited, wait = 0.0, self.outage_wait_s
        while True:
            asked, start = role, time.monotonic()
            try:
                asked = self._within_caps(kind, role, msgs)  # ModelError here too: no model usable now
                if words and parse_model(first := self.models.first_choice(asked)).is_base:
                    self.log.info("not_asked", role=kind, exp=n, model=first, why="an embedded base model would answer")
                    return None
                result = self.models.structured(asked, msgs, schema)
                break
            except ModelError as e:  # every model the role may use is down: wait, do not end the night
                seconds = time.monotonic() - start
                self.overhead.add("llm", seconds)
                self.ledger.record_call(n, CallRecord(role=kind, model_requested=asked.spec.model, model_used="",
                                                      ok=False, attempts=1, prompt_tokens=0, completion_tokens=0,
                                                      cost_usd=0.0, seconds=seconds, error=str(e)))  # fmt: skip
                closes = self.stop.until is not None and time.time() + wait > self.stop.until
                if waited + wait > self.max_outage_s or closes:
                    raise
                self.log.info("outage", role=kind, exp=n, wait_s=wait, error=str(e))
                time.sleep(wait)
                waited, wait = waited + wait, min(2 * wait, 600.0)
                _forget_outages()  # then try the primary again, not only what its cooldown leaves
        self.overhead.add("llm", time.monotonic() - start)
        self.ledger.record_call(n, result.record)
        rec = result.record
        self.log.info("model_call", role=kind, exp=n, model=rec.model_used, ok=rec.ok,
                      cost_usd=rec.cost_usd, seconds=round(rec.seconds, 3), error=rec.error)  # fmt: skip
        return result

    def _within_caps(self, kind: str, role: Any, msgs: list[dict]) -> Any:
        """`role`, or its local fallback alone when the next call could pass the role's cap;
        SpendCapReached when it could pass the program's total, or the role's with no fallback."""
        est_usd, est_tokens = self.models.estimate(role, msgs)
        total_usd, total_tokens = self.ledger.spend()
        s = self.stop
        for cap, spent, est, unit in ((s.max_usd, total_usd, est_usd, "USD"), (s.max_tokens, total_tokens, est_tokens, "tokens")):
            if cap is not None and spent + est > cap:
                raise SpendCapReached(f"the total spend cap: {spent:g} {unit} spent, and a {kind} call could cost up "
                                      f"to {est:g} more, past the program's {cap:g}")  # fmt: skip
        spec = role.spec
        usd, tokens = self.ledger.spend(kind)
        over = [f"{spent:g} of its {cap:g} {unit} spent and the call could cost up to {est:g}"
                for cap, spent, est, unit in ((spec.cap_usd, usd, est_usd, "USD"), (spec.cap_tokens, tokens, est_tokens, "tokens"))
                if cap is not None and spent + est > cap]  # fmt: skip
        if not over:
            return role
        if spec.on_cap == "fallback" and spec.fallback and parse_model(spec.fallback).is_local:
            self.log.info("spend_cap", role=kind, action="fallback", model=spec.fallback, why=over[0])
            return dataclasses.replace(role, spec=spec.model_copy(update={"model": spec.fallback, "fallback": None}))
        raise SpendCapReached(f"the {kind} role's spend cap ({role.path}): {over[0]}")

    def speaks(self, kind: str) -> bool:
        """Would `ask_words` ask role `kind` now? (The org has it and no embedded base model would
        answer; when no model can answer now, yes: `ask` waits out an outage.)"""
        if kind not in self.org.roles:
            return False
        try:
            return not parse_model(self.first_choice(kind)).is_base
        except ModelError:
            return True

    def first_choice(self, kind: str) -> str:
        """The model the client would ask first for role `kind` (raises ModelError if none can)."""
        return self.models.first_choice(self.org.roles[kind])
