"""Model calls: render a role's system prompt, ask the model client, record the call.

The client is injected (`org.models.ModelClient` in a campaign, a scripted double in tests). Every
call, answered or not, goes to the ledger's calls table and the event log; its time counts as
"llm" in the overhead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from org.ledger import Ledger
from org.overhead import Overhead
from org.program import Program
from org.prompts import VARIABLES, messages, noise_line
from org.roles import Org
from org.verdict import noise_estimate


class StructuredClient(Protocol):
    """What the graph needs from `org.models.ModelClient` (any compatible object will do)."""

    def structured(self, role: Any, messages: list[dict], schema: type[BaseModel]) -> Any: ...

    def first_choice(self, role: Any) -> str: ...


@dataclass
class Calls:
    program: Program
    org: Org
    models: StructuredClient
    ledger: Ledger
    log: Any  # the campaign's structlog logger
    overhead: Overhead

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
        role = self.org.roles[kind]
        system = role.render(**self.variables(**variables))
        start = time.monotonic()
        result = self.models.structured(role, messages(system, kind, n), schema)
        self.overhead.add("llm", time.monotonic() - start)
        self.ledger.record_call(n, result.record)
        rec = result.record
        self.log.info("model_call", role=kind, exp=n, model=rec.model_used, ok=rec.ok,
                      cost_usd=rec.cost_usd, seconds=round(rec.seconds, 3), error=rec.error)  # fmt: skip
        return result

    def first_choice(self, kind: str) -> str:
        """The model the client would ask first for role `kind` (raises ModelError if none can)."""
        return self.models.first_choice(self.org.roles[kind])
