"""ModelClient: every model call goes through litellm, with structured output.

Two kinds of failure, handled differently:
- transport (connection refused, timeout, rate limit, missing key): retried with exponential
  backoff a bounded number of times, then the role's fallback model is used (warned once per
  process); if that fails too, `ModelError` is raised — a harness problem.
- bad output (not JSON, wrong shape): the validation error is shown to the model and it tries
  again, up to `role.spec.max_attempts`; then the call is a recorded failure (`value=None`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from org import settings
from org.errors import ModelError
from org.models.names import API_KEY_ENV, CUSTOM_PROVIDERS, parse_model
from org.models.records import CallRecord, StructuredResult, T
from org.models.registry import litellm_module

if TYPE_CHECKING:
    from org.roles import Role

log = logging.getLogger("nightlab.models")

OUTAGE_COOLDOWN_S = 300.0  # a model that failed is skipped (fallback used) for this long
_down: dict[str, tuple[float, str]] = {}  # model -> (monotonic time it may be tried again, why)
_warned: set[str] = set()  # "warn once per process"
NATIVE_SCHEMA_PROVIDERS = {"local", "scripted", "ollama", "ollama_chat"}


def forget_outages() -> None:
    """Clear the per-process outage memory and warnings (tests, or a user's `resume`)."""
    _down.clear()
    _warned.clear()


def missing_key(model: str) -> str | None:
    """Name of the API-key env var this model needs and lacks, or None."""
    env = API_KEY_ENV.get(parse_model(model).provider)
    return env if env and not os.environ.get(env) else None


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _transient(exc: Exception) -> bool:
    lt = litellm_module()
    kinds = (lt.APIConnectionError, lt.Timeout, lt.RateLimitError, lt.InternalServerError,
             lt.ServiceUnavailableError, lt.BadGatewayError)
    return isinstance(exc, kinds)


def _transport_error(exc: Exception) -> bool:
    """Errors that mean 'this model did not answer' (vs. a bug in nightlab)."""
    lt = litellm_module()
    return isinstance(exc, (lt.APIError, lt.APIConnectionError, lt.Timeout, lt.RateLimitError,
                            lt.AuthenticationError, lt.NotFoundError, lt.BadRequestError))


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json_text(text: str) -> str:
    """The JSON object inside a reply: models like to wrap it in fences or chatter."""
    m = _FENCE.search(text)
    if m:
        text = m.group(1)
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text.strip()


def _reply_text(response: Any) -> str:
    message = response.choices[0].message
    if message.content:
        return str(message.content)
    calls = getattr(message, "tool_calls", None) or []  # some providers answer via a tool call
    return str(calls[0].function.arguments) if calls else ""


def validation_feedback(error: Exception) -> str:
    if isinstance(error, ValidationError):
        parts = []
        for e in error.errors(include_url=False)[:6]:
            loc = ".".join(str(p) for p in e["loc"]) or "(root)"
            parts.append(f"{loc}: {e['msg']}")
        return "; ".join(parts)
    return str(error)


class _Call:
    """State of one structured call across its attempts: messages, tokens, cost, who answered."""

    def __init__(self, role: Role, messages: list[dict], schema: type[BaseModel]):
        self.role, self.schema = role, schema
        self.messages = [dict(m) for m in messages]
        self.started = time.monotonic()
        self.attempts = self.prompt_tokens = self.completion_tokens = 0
        self.cost = 0.0
        self.model_used = role.spec.model
        self.error: str | None = None

    @property
    def response_format(self) -> dict[str, Any]:
        schema = self.schema
        return {
            "type": "json_schema",
            "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()},
        }

    def candidates(self) -> list[str]:
        spec = self.role.spec
        models = [spec.model] + ([spec.fallback] if spec.fallback and spec.fallback != spec.model else [])
        usable = []
        for model in models:
            key = missing_key(model)
            if key:  # checked on every call, so setting the key later takes effect at once
                self._warn_unavailable(model, f"{key} is not set")
            elif model in _down and _down[model][0] > time.monotonic():
                self.error = f"{model}: {_down[model][1]} (recently)"
            else:
                usable.append(model)
        if not usable:
            raise ModelError(f"{self.role.path}: model: no usable model ({self.error})")
        return usable

    def _note_down(self, model: str, reason: str) -> None:
        _down[model] = (time.monotonic() + OUTAGE_COOLDOWN_S, reason)
        self._warn_unavailable(model, reason)

    def _warn_unavailable(self, model: str, reason: str) -> None:
        self.error = f"{model}: {reason}"
        fb = self.role.spec.fallback
        nxt = f"; using fallback {fb}" if fb and fb != model else ""
        _warn_once(model, f"{self.role.path}: model {model} unavailable ({reason}){nxt}")

    def kwargs(self, model: str) -> dict[str, Any]:
        spec = self.role.spec
        name = parse_model(model)
        messages = self.messages
        lt = litellm_module()
        native = name.provider in NATIVE_SCHEMA_PROVIDERS
        if not native:
            try:
                native = bool(lt.supports_response_schema(model=model))
            except Exception:  # noqa: BLE001 - litellm raises bare Exception for unmapped models
                native = False
        if not native:  # tell the model the schema in words as well
            hint = "Reply with only a JSON object matching this JSON schema:\n" + json.dumps(
                self.schema.model_json_schema())
            messages = messages + [{"role": "system", "content": hint}]
        kw: dict[str, Any] = {
            "model": model, "messages": messages, "temperature": spec.temperature,
            "max_tokens": spec.max_tokens, "timeout": spec.timeout_s, "num_retries": 0,
            "response_format": self.response_format,
            "drop_params": not native,  # providers without response_format get the hint only
        }
        if spec.seed is not None and (name.provider in CUSTOM_PROVIDERS or "seed" in (
                lt.get_supported_openai_params(model=model) or [])):  # Anthropic takes none
            kw["seed"] = spec.seed
        if name.is_ollama:
            kw["api_base"] = settings.ollama_host()
        return kw

    def account(self, response: Any, model: str) -> None:
        usage = getattr(response, "usage", None)
        self.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
        self.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        if not parse_model(model).is_local:
            try:
                self.cost += float(litellm_module().completion_cost(completion_response=response))
            except Exception as e:  # noqa: BLE001 - bare Exception when the model has no price
                _warn_once(f"cost:{model}", f"no cost data for {model} ({e}); counted as $0")
        self.model_used = model

    def validate(self, response: Any) -> BaseModel | None:
        """The parsed value, or None after adding the error to the conversation."""
        text = _reply_text(response)
        try:
            return self.schema.model_validate_json(_json_text(text))
        except (ValidationError, ValueError) as e:
            self.error = validation_feedback(e)
        self.messages += [
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"Your reply was not valid: {self.error}\n"
             "Reply again with only a JSON object that matches the schema."},
        ]
        return None

    def result(self, value: BaseModel | None) -> StructuredResult:
        record = CallRecord(
            role=self.role.name, model_requested=self.role.spec.model,
            model_used=self.model_used, ok=value is not None, attempts=self.attempts,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
            cost_usd=round(self.cost, 8), seconds=round(time.monotonic() - self.started, 3),
            error=None if value is not None else self.error,
        )
        return StructuredResult(value=value, record=record)


class ModelClient:
    """Structured calls for roles. `on_record` receives every CallRecord (ok or not)."""

    def __init__(
        self,
        on_record: Callable[[CallRecord], None] | None = None,
        *,
        transport_attempts: int = 3,
        backoff_s: float = 1.0,
    ):
        self.on_record = on_record
        self.transport_attempts = max(1, transport_attempts)
        self.backoff_s = backoff_s

    def _emit(self, call: _Call, value: BaseModel | None) -> StructuredResult:
        result = call.result(value)
        if self.on_record:
            self.on_record(result.record)
        return result

    def _give_up(self, call: _Call) -> ModelError:
        self._emit(call, None)
        return ModelError(f"{call.role.path}: model: {call.error}")

    def estimate(self, role: Role, messages: list[dict]) -> tuple[float, int]:
        """The most a call for `role` could cost now, in USD and hosted-model tokens: every attempt
        sending the prompt and getting `max_tokens` back, at litellm's prices for the model it
        would ask first. A hosted model with no known price is an unbounded cost (a USD cap then
        stops it rather than be passed blind)."""
        model = self.first_choice(role)
        if parse_model(model).is_local:
            return 0.0, 0
        lt = litellm_module()
        try:
            prompt = int(lt.token_counter(model=model, messages=messages))
        except Exception:  # noqa: BLE001 - no tokenizer known: about 3 characters a token, rounded up
            prompt = sum(len(str(m.get("content", ""))) for m in messages) // 3 + 1
        attempts, out = role.spec.max_attempts, role.spec.max_tokens
        try:
            p, c = lt.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=out)
            usd = attempts * float(p + c)
        except Exception:  # noqa: BLE001 - litellm raises bare Exception for models it has no price for
            usd = float("inf")
        return usd, attempts * (prompt + out)

    def first_choice(self, role: Role) -> str:
        """The model a call for `role` would try first now: its primary, unless the primary's key
        is missing or it is cooling down after an outage. Raises ModelError when none is usable."""
        return _Call(role, [], BaseModel).candidates()[0]

    def structured(self, role: Role, messages: list[dict], schema: type[T]) -> StructuredResult[T]:
        call = _Call(role, messages, schema)
        for _ in range(role.spec.max_attempts):
            call.attempts += 1
            try:
                response, model = self._complete(call)
            except ModelError as e:
                raise self._give_up(call) from e
            call.account(response, model)
            value = call.validate(response)
            if value is not None:
                return self._emit(call, value)
        return self._emit(call, None)

    def _complete(self, call: _Call) -> tuple[Any, str]:
        lt = litellm_module()
        for model in call.candidates():
            for attempt in range(self.transport_attempts):
                try:
                    return lt.completion(**call.kwargs(model)), model
                except Exception as e:
                    if not _transport_error(e):
                        raise
                    reason = (str(e).strip() or type(e).__name__).splitlines()[0]
                    call.error = f"{model}: {reason}"
                    if not _transient(e) or attempt + 1 == self.transport_attempts:
                        break
                    time.sleep(self.backoff_s * 2**attempt)
            call._note_down(model, reason)
        raise ModelError(call.error or "no model answered")
