"""The one place nightlab reads its environment variables (all `NIGHTLAB_`-prefixed).

Functions, not module constants: they read the environment on every call so tests (and a
long-lived process) see changes made with monkeypatch / os.environ.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def home_dir() -> Path:
    """Mutable state: campaigns, ledgers, memory DB. `NIGHTLAB_HOME` overrides the default."""
    raw = os.environ.get("NIGHTLAB_HOME")
    path = Path(raw).expanduser() if raw else Path(platformdirs.user_data_dir("nightlab"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Immutable caches: data, tokenizers, assembled model weights. `NIGHTLAB_CACHE` overrides."""
    raw = os.environ.get("NIGHTLAB_CACHE")
    path = Path(raw).expanduser() if raw else Path(platformdirs.user_cache_dir("nightlab"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def ollama_host() -> str:
    """Ollama server base URL from the standard `OLLAMA_HOST` (host:port or URL)."""
    raw = os.environ.get("OLLAMA_HOST", "").strip() or "127.0.0.1:11434"
    if "://" not in raw:
        raw = f"http://{raw}"
    return raw.rstrip("/")


def local_threads() -> int:
    """CPU threads for the embedded llama.cpp model: `NIGHTLAB_LOCAL_THREADS`, default all cores.

    On a machine shared with other busy processes, fewer threads than cores is often faster
    (llama.cpp's threads spin at barriers)."""
    raw = os.environ.get("NIGHTLAB_LOCAL_THREADS", "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            from org.errors import InputError

            raise InputError(None, "NIGHTLAB_LOCAL_THREADS", f"must be an integer, got {raw!r}") from None
    return os.cpu_count() or 1


def outage_wait_s() -> float:
    """The first wait before a role whose every model is down is asked again (doubling to 10
    min). `NIGHTLAB_OUTAGE_WAIT_S` overrides the 60 s default."""
    return float(os.environ.get("NIGHTLAB_OUTAGE_WAIT_S", "60"))
