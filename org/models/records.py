"""What a structured model call returns and what the ledger records about it."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)


class CallRecord(BaseModel):
    """One structured call, including its validation retries and any fallback."""

    role: str
    model_requested: str
    model_used: str
    ok: bool
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    seconds: float
    error: str | None = None  # last validation / transport error when ok is False


class StructuredResult(BaseModel, Generic[T]):
    value: T | None  # None => recorded failure (bad model output never raises)
    record: CallRecord
