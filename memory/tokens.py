"""Token counting for prompt budgets: tiktoken `cl100k_base`, strictly offline.

tiktoken downloads its BPE file on first use unless it finds it in its cache. We never let it:
we look in tiktoken's own cache (TIKTOKEN_CACHE_DIR / DATA_GYM_CACHE_DIR / $TMP/data-gym-cache)
and in the copy litellm (a pinned dependency) ships for exactly this reason, and load only when
the file is there; tiktoken still verifies its sha256. litellm is located, not imported (slow).
cl100k_base is a stand-in for "a typical modern tokenizer": budgets are approximate for other
models' tokenizers but exact and never exceeded for the counter used here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from memory.errors import StoreError

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_CACHE_KEY = hashlib.sha1(_CL100K_URL.encode()).hexdigest()  # tiktoken's cache file name


def _candidate_dirs() -> list[Path]:
    dirs = [os.environ.get("TIKTOKEN_CACHE_DIR"), os.environ.get("DATA_GYM_CACHE_DIR")]
    dirs.append(os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    spec = importlib.util.find_spec("litellm")
    if spec and spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations)))
        dirs.append(str(base / "litellm_core_utils" / "tokenizers"))
    return [Path(d) for d in dirs if d]


@lru_cache(maxsize=1)
def encoding() -> Any:
    import tiktoken
    from tiktoken_ext import openai_public

    for d in _candidate_dirs():
        if (d / _CACHE_KEY).is_file():
            old = os.environ.get("TIKTOKEN_CACHE_DIR")
            os.environ["TIKTOKEN_CACHE_DIR"] = str(d)  # only for this load; restored below
            try:
                return tiktoken.Encoding(**openai_public.cl100k_base())
            finally:
                if old is None:
                    del os.environ["TIKTOKEN_CACHE_DIR"]
                else:
                    os.environ["TIKTOKEN_CACHE_DIR"] = old
    raise StoreError(
        f"cl100k_base BPE file ({_CACHE_KEY}) not found offline in "
        f"{[str(d) for d in _candidate_dirs()]}; set TIKTOKEN_CACHE_DIR to a directory holding it"
    )


def count_tokens(text: str) -> int:
    return len(encoding().encode(text, disallowed_special=()))


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` (cut on a token boundary) with at most max_tokens tokens."""
    if max_tokens <= 0:
        return ""
    enc = encoding()
    ids = enc.encode(text, disallowed_special=())
    if len(ids) <= max_tokens:
        return text
    # The cut may end inside a multi-byte character: drop that partial tail, so the result is
    # a true prefix. Re-encoding a prefix can also tokenize differently; shrink until it fits.
    cut = enc.decode_bytes(ids[:max_tokens]).decode("utf-8", errors="ignore")
    while cut and count_tokens(cut) > max_tokens:
        cut = cut[:-1]
    return cut
