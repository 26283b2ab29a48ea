"""Scripted fake LLM responses for tests: a litellm custom provider under `scripted/`.

Everything else in the call path is real (litellm routing, ModelClient retries, validation).
The queue is consumed in order; each item is a reply string, or an Exception instance to raise
(e.g. `litellm.APIConnectionError(...)` to simulate an outage). Every messages list sent is
recorded in `.sent` (with the model and params) so tests can assert what the model was shown.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from org.models.names import CUSTOM_PROVIDERS
from org.models.registry import litellm_module, register_provider

CUSTOM_PROVIDERS.add("scripted")  # role files in tests may name `scripted/...` once this is imported

# Through litellm_module(): it sets the offline cost map before litellm's first import.
CustomLLM = litellm_module().CustomLLM
from litellm.types.utils import Usage


@dataclass
class Sent:
    model: str
    messages: list[dict]
    params: dict


@dataclass
class ScriptedLLM(CustomLLM):
    replies: deque = field(default_factory=deque)
    sent: list[Sent] = field(default_factory=list)
    prompt_tokens: int = 10
    completion_tokens: int = 5

    def __post_init__(self) -> None:
        CustomLLM.__init__(self)

    def push(self, *replies: str | dict | Exception) -> ScriptedLLM:
        for reply in replies:
            self.replies.append(json.dumps(reply) if isinstance(reply, dict) else reply)
        return self

    def completion(self, model: str, messages: list, api_base: Any, custom_prompt_dict: Any,
                   model_response: Any, print_verbose: Any, encoding: Any, api_key: Any,
                   logging_obj: Any, optional_params: dict, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(Sent(model, [dict(m) for m in messages], dict(optional_params)))
        if not self.replies:
            raise AssertionError(f"ScriptedLLM queue empty; call #{len(self.sent)} to {model}")
        reply = self.replies.popleft()
        if isinstance(reply, Exception):
            raise reply
        model_response.choices[0].message.content = reply
        model_response.usage = Usage(prompt_tokens=self.prompt_tokens,
                                     completion_tokens=self.completion_tokens,
                                     total_tokens=self.prompt_tokens + self.completion_tokens)
        return model_response


def install_scripted(*replies: str | dict | Exception) -> ScriptedLLM:
    """A fresh ScriptedLLM registered as the `scripted/` provider."""
    fake = ScriptedLLM().push(*replies)
    register_provider("scripted", fake)
    return fake
