"""A model client that answers from a script instead of a model, and records what it was sent.

For tests and `evals/bench_loop.py`: scripted answers stand in for LLM *responses* only; every
other part of a campaign (git, runs, ledger, memory) is real. An answer is a dict validated
against the schema the graph asked for, a pydantic model, `None` for "the model produced nothing
valid" (which the graph must record and feed back), or a callable `(schema, messages) -> answer`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from org.models.records import CallRecord, StructuredResult

Answer = dict[str, Any] | BaseModel | None | Callable[[type[BaseModel], list[dict]], Any]


class ScriptedClient:
    """`script` maps role kind -> answers (consumed in order); `default` answers when one runs dry."""

    def __init__(self, script: dict[str, Iterable[Answer]] | None = None,
                 default: dict[str, Answer] | None = None, cost_usd: float = 0.0,
                 answered_by: dict[str, str] | None = None, down: set[str] | None = None):  # fmt: skip
        self.queues = {kind: deque(items) for kind, items in (script or {}).items()}
        self.default = default or {}
        self.cost_usd = cost_usd
        self.answered_by = answered_by or {}  # role kind -> model to report (e.g. a fallback)
        self.down = down or set()  # role kinds whose primary is known to be down before a call
        self.sent: list[dict[str, Any]] = []  # {"role", "messages", "schema"} per call

    def first_choice(self, role: Any) -> str:
        if role.name in self.down and role.spec.fallback:
            return role.spec.fallback
        return role.spec.model

    # The record names the model first_choice gives (the primary unless the role is in `down`)
    # unless `answered_by` overrides it (a primary that failed during the call).
    def structured(self, role: Any, messages: list[dict], schema: type[BaseModel]) -> StructuredResult:
        kind = role.name  # role files are named after their kind (proposer.md, ...)
        self.sent.append({"role": kind, "messages": messages, "schema": schema})
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
        record = CallRecord(role=kind, model_requested=role.spec.model, model_used=self.answered_by.get(kind, self.first_choice(role)),
                            ok=value is not None, attempts=1, prompt_tokens=0, completion_tokens=0,
                            cost_usd=self.cost_usd, seconds=0.0, error=error)  # fmt: skip
        return StructuredResult(value=value, record=record)
