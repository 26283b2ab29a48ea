"""A model client that answers from a script instead of a model, and records what it was sent.

For tests and `evals/bench_loop.py`: scripted answers stand in for LLM *responses* only; every
other part of a campaign (git, runs, ledger, memory) is real. An answer is a dict validated
against the schema the graph asked for, a pydantic model, `None` for "the model produced nothing
valid" (which the graph must record and feed back), or a callable `(schema, messages) -> answer`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from org.errors import ModelError
from org.models.names import parse_model
from org.models.records import CallRecord, StructuredResult

Answer = dict[str, Any] | BaseModel | None | Callable[[type[BaseModel], list[dict]], Any]


class ScriptedClient:
    """`script` maps role kind -> answers (consumed in order); `default` answers when one runs dry."""

    def __init__(self, script: dict[str, Iterable[Answer]] | None = None,
                 default: dict[str, Answer] | None = None, cost_usd: float = 0.0,
                 answered_by: dict[str, str] | None = None, down: set[str] | None = None,
                 tokens: int = 0, outage: dict[str, int] | None = None, local_free: bool = False,
                 delay_s: dict[str, float] | None = None):  # fmt: skip
        self.queues = {kind: deque(items) for kind, items in (script or {}).items()}
        self.default = default or {}
        self.cost_usd = cost_usd
        self.tokens = tokens  # hosted-model tokens each call is charged (prompt tokens in the record)
        self.outage = dict(outage or {})  # role kind -> how many calls fail first as every model down
        self.local_free = local_free  # True: a local model's answer costs nothing (as it does for real)
        self.answered_by = answered_by or {}  # role kind -> model to report (e.g. a fallback)
        self.down = down or set()  # role kinds whose primary is known to be down before a call
        self.delay_s = delay_s or {}  # role kind -> seconds each answer takes (a model's latency)
        self.sent: list[dict[str, Any]] = []  # {"role", "messages", "schema"} per call

    def estimate(self, role: Any, messages: list[dict]) -> tuple[float, int]:
        """What a call costs here (`cost_usd`, `tokens`): exactly what it will be charged."""
        return self._price(self.first_choice(role))

    def _price(self, model: str) -> tuple[float, int]:
        return (0.0, 0) if self.local_free and parse_model(model).is_local else (self.cost_usd, self.tokens)

    def first_choice(self, role: Any) -> str:
        if role.name in self.down and role.spec.fallback:
            return role.spec.fallback
        return role.spec.model

    # The record names the model first_choice gives (the primary unless the role is in `down`)
    # unless `answered_by` overrides it (a primary that failed during the call).
    def structured(self, role: Any, messages: list[dict], schema: type[BaseModel]) -> StructuredResult:
        kind = role.name  # role files are named after their kind (proposer.md, ...)
        answered_by = self.answered_by.get(kind)
        if self.outage.get(kind, 0) > 0 and not parse_model(role.spec.model).is_local:
            self.outage[kind] -= 1  # an injected outage of the hosted models: as the real client does,
            fb = role.spec.fallback  # a local fallback answers, or the call fails as every model down
            if not (fb and parse_model(fb).is_local):
                raise ModelError(f"{role.path}: model: scripted outage")
            answered_by = fb
        self.sent.append({"role": kind, "messages": messages, "schema": schema, "model": role.spec.model,
                          "at": time.monotonic()})  # fmt: skip
        time.sleep(self.delay_s.get(kind, 0.0))
        queue = self.queues.get(kind)
        if queue:
            answer = queue.popleft()
        elif kind in self.default:
            answer = self.default[kind]
        else:
            raise AssertionError(f"script has no answer left for role {kind!r}")
        if callable(answer) and not isinstance(answer, BaseModel):
            answer = answer(schema, messages)
        value, error = None, "scripted: no valid answer"
        if answer is not None:
            try:
                data = answer.model_dump() if isinstance(answer, BaseModel) else answer
                value, error = schema.model_validate(data), None
            except ValidationError as e:
                error = f"scripted answer does not fit {schema.__name__}: {e.errors()[0]['msg']}"
        used = answered_by or self.first_choice(role)
        usd, tokens = self._price(used)
        record = CallRecord(role=kind, model_requested=role.spec.model, model_used=used,
                            ok=value is not None, attempts=1, prompt_tokens=tokens, completion_tokens=0,
                            cost_usd=usd, seconds=self.delay_s.get(kind, 0.0), error=error)  # fmt: skip
        return StructuredResult(value=value, record=record)
