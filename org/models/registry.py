"""Lazy litellm import and the custom-provider registry (`local/...`, tests' `scripted/...`).

litellm is imported on first use only (5-8 s), with its offline cost map, and our providers are
registered in `litellm.custom_provider_map` at that moment.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType
from typing import Any

from org.models.names import CUSTOM_PROVIDERS

_lock = threading.Lock()
_litellm: ModuleType | None = None


def offline_env() -> None:
    """Never fetch litellm's cost map from GitHub: must be set before litellm's first import."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def litellm_module() -> ModuleType:
    """The configured litellm module (imported once, local provider registered)."""
    global _litellm
    if _litellm is not None:
        return _litellm
    with _lock:
        if _litellm is None:
            offline_env()
            import litellm

            litellm.suppress_debug_info = True
            litellm.telemetry = False
            from org.models.local import LocalLLM

            _register(litellm, "local", LocalLLM())
            _litellm = litellm
    return _litellm


def _register(litellm: ModuleType, name: str, handler: Any) -> None:
    others = [p for p in litellm.custom_provider_map if p.get("provider") != name]
    litellm.custom_provider_map = [*others, {"provider": name, "custom_handler": handler}]
    CUSTOM_PROVIDERS.add(name)


def register_provider(name: str, handler: Any) -> None:
    """Register a litellm CustomLLM under `name/` (replacing an earlier one of that name)."""
    _register(litellm_module(), name, handler)
