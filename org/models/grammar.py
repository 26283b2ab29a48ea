"""Grammar-constrained sampling that stays fast with Gemma 3's 262k-token vocabulary.

llama-cpp-python puts the grammar sampler first in its chain, so every generated token checks
all 262k candidates against the grammar (~0.3 s/token on 2 cores). llama.cpp's own
`common_sampler` does it lazily: sample as usual, check only the chosen token against the
grammar, and fall back to masking the whole vocabulary only when that token is rejected.
This module does the same through llama-cpp-python's low-level API, and builds the grammar a
JSON schema stands for (`schema_grammar`). Only imported when a local model is used (it imports
llama_cpp and numpy).
"""

from __future__ import annotations

import ctypes
import json
import math
import re
from functools import lru_cache
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar
from llama_cpp.llama_grammar import BuiltinRule, SchemaConverter

TOP_K = 256  # candidates the middle path checks against the grammar
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


# ---- JSON schema -> grammar ---------------------------------------------------------------------
# llama-cpp-python's converter (llama_grammar.SchemaConverter, used by `response_format`) lets any
# character but `"` and `\` into a JSON string, raw control characters included: a sampled newline
# inside a string passed the grammar and failed JSON parsing ("control character (\u0000-\u001F)
# found while parsing a string"). llama.cpp's own converter (common/json-schema-to-grammar.cpp)
# excludes them, as JSON does (RFC 8259 section 7). This one also keeps `\u` escapes off the
# UTF-16 surrogate range, which strict parsers (pydantic's) refuse when unpaired.
STRING_CHAR = BuiltinRule(
    r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" ([0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))',
    [],
)


# An exponent of at most two digits: `1e999` is valid JSON that parses to inf, which no schema means.
NUMBER = BuiltinRule('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? [0-9] [0-9]?)? space',
                     ["integral-part", "decimal-part"])  # fmt: skip


class _StrictConverter(SchemaConverter):
    """llama-cpp-python's schema converter with JSON's own string characters and finite numbers."""

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        return super()._add_primitive(name, {"char": STRING_CHAR, "number": NUMBER}.get(name, rule))


# JSON-schema keywords the converter turns into grammar, and annotations that constrain nothing.
# Any other keyword (`minimum`, `propertyNames`, `uniqueItems`, ...) the converter would silently
# drop, so the grammar would admit answers the schema refuses: such a schema is refused instead.
GRAMMAR_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
    "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
    "pattern", "format", "minLength", "maxLength",
}  # fmt: skip
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
               "readOnly", "writeOnly"}  # fmt: skip


# The converter writes a regex's characters straight into the JSON string: only a class that
# excludes what JSON forbids raw (`"`, `\`, control characters) is safe, as `prompts.one_line` writes.
SAFE_PATTERN = re.compile(r"\^\[\^([^\]]*)\]\{\d+,\d+\}\$")
SAFE_FORMATS = {"uuid", "time", "date-time"}  # "date" would admit 2023-02-31; others become any string
ALONE = {"enum", "const", "$ref", "anyOf", "oneOf", "allOf"}  # the converter drops their siblings


def _unsafe_pattern(pattern: str) -> bool:
    m = SAFE_PATTERN.fullmatch(pattern)
    excluded = m.group(1).lower() if m else ""
    return not m or not all(part in excluded for part in ('"', "\\\\", "\\x00-\\x1f"))


def unenforced(schema: Any, where: str = "#") -> list[str]:
    """`path: keyword` for every keyword in `schema` that no grammar would enforce (or that the
    converter would drop beside another, or turn into a grammar that admits invalid JSON)."""
    if not isinstance(schema, dict):
        return []
    found = [f"{where}: {key}" for key in schema if key not in GRAMMAR_KEYWORDS | ANNOTATIONS]
    if "pattern" in schema and _unsafe_pattern(str(schema["pattern"])):
        found.append(f"{where}: pattern {schema['pattern']!r} (only one_line()'s form is safe)")
    if "format" in schema and schema["format"] not in SAFE_FORMATS:
        found.append(f"{where}: format {schema['format']!r}")
    if ({"pattern", "format"} & schema.keys()) and ({"minLength", "maxLength"} & schema.keys()):
        found.append(f"{where}: minLength/maxLength beside pattern or format")
    if alone := ALONE & schema.keys():
        extra = set(schema) - ANNOTATIONS - {"type", *alone, "$defs", "definitions"}
        if len(alone) > 1 or extra:
            found.append(f"{where}: {', '.join(sorted(extra | alone))} together")
    if "prefixItems" in schema and "items" in schema:
        found.append(f"{where}: prefixItems beside items")
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            found += unenforced(sub, f"{where}/{key}/{name}")
    items = schema.get("items")
    for i, sub in enumerate(items if isinstance(items, list) else [items]):
        found += unenforced(sub, f"{where}/items" + (f"/{i}" if isinstance(items, list) else ""))
    found += unenforced(schema.get("additionalProperties"), f"{where}/additionalProperties")
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(schema.get(key) or []):
            found += unenforced(sub, f"{where}/{key}/{i}")
    return found


def schema_gbnf(schema: dict[str, Any]) -> str:
    """The GBNF grammar of JSON documents valid under `schema` (refs resolved, no fetching).
    Raises ValueError on a schema the grammar cannot enforce whole (llama-cpp-python would
    drop the keyword, or fall back to any JSON, without a word)."""
    if found := unenforced(schema):
        raise ValueError(f"no grammar enforces {'; '.join(found)}")
    converter = _StrictConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter.visit(converter.resolve_refs(schema, "schema"), "")
    return converter.format_grammar()


@lru_cache(maxsize=64)
def _grammar(schema_json: str) -> LlamaGrammar:
    return LlamaGrammar.from_string(schema_gbnf(json.loads(schema_json)), verbose=False)


def schema_grammar(schema: dict[str, Any] | None) -> LlamaGrammar:
    """The grammar for a JSON schema, or for any JSON object when `schema` is None (cached)."""
    if schema is None:
        return LlamaGrammar.from_string(llama_cpp.llama_grammar.JSON_GBNF, verbose=False)
    return _grammar(json.dumps(schema))  # key order kept: it is the order the grammar enforces


def parse_check(llama: Llama, grammar: LlamaGrammar) -> None:
    """ValueError if llama.cpp refuses `grammar` (raised here, before a generation, where it is the
    schema's fault: inside one it would look like a transport error and cool the model down)."""
    sampler = llama_cpp.llama_sampler_init_grammar(llama._model.vocab, grammar._grammar.encode(),
                                                   grammar._root.encode())  # fmt: skip
    if not sampler:
        raise ValueError("llama.cpp rejected the grammar")
    llama_cpp.llama_sampler_free(sampler)


# ---- sampling ----------------------------------------------------------------------------------


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
            if not self._allowed(token):  # a chain that picked a masked token: never let it out
                raise RuntimeError(f"grammar sampler picked token {token}, which the grammar rejects")
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
