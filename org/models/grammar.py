"""Grammar-constrained sampling that stays fast with Gemma 3's 262k-token vocabulary.

llama-cpp-python puts the grammar sampler first in its chain, so every generated token checks
all 262k candidates against the grammar (~0.3 s/token on 2 cores). llama.cpp's own
`common_sampler` does it lazily: sample as usual, check only the chosen token against the
grammar, and fall back to masking the whole vocabulary only when that token is rejected.
This module does the same through llama-cpp-python's low-level API. Only imported when a
local model is used (it imports llama_cpp and numpy).
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar

TOP_K = 256  # candidates the middle path checks against the grammar
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class LazyGrammarSampler:
    """Duck-types llama-cpp-python's LlamaSampler where `Llama.sample` uses it (`.sample`)."""

    def __init__(self, llama: Llama, chain: Any, grammar: LlamaGrammar):
        self.chain = chain  # penalties / top-k / top-p / temperature / dist, no grammar
        self.grammar = llama_cpp.llama_sampler_init_grammar(
            llama._model.vocab, grammar._grammar.encode(), grammar._root.encode())
        if not self.grammar:
            raise ValueError("llama.cpp rejected the grammar")
        self.n_vocab = llama.n_vocab()
        self.buf = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        self.one = (llama_cpp.llama_token_data * 1)()
        self.top_masks = 0  # how often the middle / slow paths ran (for tests and curiosity)
        self.full_masks = 0

    def __del__(self) -> None:
        if getattr(self, "grammar", None):
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None

    def _candidates(self, ctx: Any, idx: int) -> llama_cpp.llama_token_data_array:
        logits = llama_cpp.llama_get_logits_ith(ctx, idx)
        self.buf["id"] = np.arange(self.n_vocab, dtype=np.intc)
        self.buf["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self.buf["p"] = 0.0
        data = self.buf.ctypes.data_as(llama_cpp.llama_token_data_p)
        return llama_cpp.llama_token_data_array(data=data, size=self.n_vocab, selected=-1, sorted=False)

    def _pick(self, arr: llama_cpp.llama_token_data_array) -> int:
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(arr))
        return int(arr.data[arr.selected].id)

    def _allowed(self, token: int) -> bool:
        self.one[0].id, self.one[0].logit, self.one[0].p = token, 0.0, 0.0
        arr = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self.one, llama_cpp.llama_token_data_p), size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return not math.isinf(self.one[0].logit)

    def _top(self, k: int) -> llama_cpp.llama_token_data_array:
        """The k most likely candidates (from the last `_candidates` fill), as a new array."""
        top = np.argpartition(self.buf["logit"], -k)[-k:]
        self.small = self.buf[top].copy()  # kept alive while llama.cpp reads it
        data = self.small.ctypes.data_as(llama_cpp.llama_token_data_p)
        return llama_cpp.llama_token_data_array(data=data, size=k, selected=-1, sorted=False)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        token = self._pick(self._candidates(ctx.ctx, idx))
        if not self._allowed(token):
            # middle path: the grammar over the top TOP_K candidates only (the chain keeps 40)
            arr = self._candidates(ctx.ctx, idx)
            small = self._top(TOP_K)
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(small))
            if np.isfinite(self.small["logit"]).any():
                self.top_masks += 1
                token = self._pick(small)
            else:  # slow path: mask the whole vocabulary, sample again
                self.full_masks += 1
                llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(arr))
                token = self._pick(arr)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.chain.sampler, token)
        return token


class FastGrammarLlama(Llama):
    """A Llama whose grammar-constrained generations use `LazyGrammarSampler`."""

    last_sampler: LazyGrammarSampler | None = None

    def _init_sampler(self, *args: Any, grammar: LlamaGrammar | None = None, **kwargs: Any) -> Any:
        chain = super()._init_sampler(*args, grammar=None, **kwargs)
        if grammar is None:
            return chain
        self.last_sampler = LazyGrammarSampler(self, chain, grammar)
        return self.last_sampler
