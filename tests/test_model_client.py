"""ModelClient through real litellm routing with scripted responses (no network)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from org.errors import ModelError
from org.models import client as client_mod
from org.models.client import ModelClient
from org.models.records import CallRecord
from org.models.registry import litellm_module
from org.roles import load_role
from tests.fakes import install_scripted


class Verdict(BaseModel):
    keep: bool
    reason: str = Field(max_length=200)


GOOD = {"keep": True, "reason": "lower val_bpb"}


@pytest.fixture(autouse=True)
def _fresh_outages():
    client_mod.forget_outages()
    yield
    client_mod.forget_outages()


def role_file(tmp_path: Path, model: str, fallback: str | None = None, attempts: int = 3) -> Path:
    lines = [f"model: {model}", f"max_attempts: {attempts}"]
    if fallback:
        lines.append(f"fallback: {fallback}")
    path = tmp_path / "reviewer.md"
    path.write_text("---\n" + "\n".join(lines) + "\n---\nYou review {{ thing }}.\n")
    return path


def ask(client: ModelClient, role_path: Path):
    role = load_role(role_path)
    msgs = [{"role": "system", "content": role.render(thing="a diff")},
            {"role": "user", "content": "Keep it?"}]
    return client.structured(role, msgs, Verdict)


def test_valid_reply_parses_and_records(tmp_path: Path) -> None:
    fake = install_scripted("```json\n" + '{"keep": true, "reason": "lower val_bpb"}' + "\n```")
    records: list[CallRecord] = []
    result = ask(ModelClient(on_record=records.append), role_file(tmp_path, "scripted/a"))
    assert result.value == Verdict(**GOOD)
    rec = result.record
    assert rec.ok and rec.attempts == 1 and rec.role == "reviewer"
    assert rec.model_requested == rec.model_used == "scripted/a"
    assert (rec.prompt_tokens, rec.completion_tokens, rec.cost_usd) == (10, 5, 0.0)
    assert records == [rec]
    sent = fake.sent[0]
    assert sent.messages[0] == {"role": "system", "content": "You review a diff."}
    rf = sent.params["response_format"]
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["schema"]["properties"]["keep"]["type"] == "boolean"


def test_invalid_json_is_shown_to_model_then_fixed(tmp_path: Path) -> None:
    fake = install_scripted("sure! keep it", '{"keep": "maybe"}', GOOD)
    result = ask(ModelClient(), role_file(tmp_path, "scripted/a"))
    assert result.value is not None and result.record.attempts == 3
    assert (result.record.prompt_tokens, result.record.completion_tokens) == (30, 15)
    second, third = fake.sent[1].messages, fake.sent[2].messages
    assert second[-2] == {"role": "assistant", "content": "sure! keep it"}
    assert "not valid" in second[-1]["content"] and "JSON" in second[-1]["content"]
    assert "keep: Input should be a valid boolean" in third[-1]["content"]


def test_invalid_json_storm_is_bounded_recorded_failure(tmp_path: Path) -> None:
    fake = install_scripted(*["not json"] * 10)
    records: list[CallRecord] = []
    result = ask(ModelClient(on_record=records.append), role_file(tmp_path, "scripted/a", attempts=4))
    assert result.value is None
    assert len(fake.sent) == 4 and len(fake.replies) == 6
    rec = result.record
    assert not rec.ok and rec.attempts == 4 and "Invalid JSON" in (rec.error or "")
    assert records == [rec]


def test_outage_retries_with_backoff_then_falls_back(tmp_path: Path, caplog, monkeypatch) -> None:
    lt = litellm_module()
    down = lambda: lt.APIConnectionError(message="refused", llm_provider="scripted", model="a")
    fake = install_scripted(down(), down(), down(), GOOD, GOOD)
    sleeps: list[float] = []
    monkeypatch.setattr(client_mod.time, "sleep", sleeps.append)
    client = ModelClient(transport_attempts=3, backoff_s=0.5)
    path = role_file(tmp_path, "scripted/primary", fallback="scripted/backup")
    with caplog.at_level(logging.WARNING, logger="nightlab.models"):
        first = ask(client, path)
        second = ask(client, path)  # primary remembered as down: straight to the fallback
    assert sleeps == [0.5, 1.0]
    assert [s.model for s in fake.sent] == ["primary"] * 3 + ["backup", "backup"]
    for result in (first, second):
        assert result.value is not None
        assert result.record.model_requested == "scripted/primary"
        assert result.record.model_used == "scripted/backup"
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "using fallback scripted/backup" in warnings[0].getMessage()


def test_missing_key_uses_fallback_without_calling_primary(tmp_path: Path) -> None:
    fake = install_scripted(GOOD)
    result = ask(ModelClient(), role_file(tmp_path, "anthropic/claude-sonnet-4-5", "scripted/b"))
    assert result.record.model_used == "scripted/b" and result.value is not None
    assert len(fake.sent) == 1


def test_first_choice_is_the_fallback_only_when_the_primary_cannot_answer(tmp_path: Path, monkeypatch) -> None:
    lt = litellm_module()
    client = ModelClient(transport_attempts=1, backoff_s=0)
    keyed = load_role(role_file(tmp_path, "anthropic/claude-haiku-4-5", "scripted/b"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert client.first_choice(keyed) == "scripted/b"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert client.first_choice(keyed) == "anthropic/claude-haiku-4-5"
    path = role_file(tmp_path, "scripted/p", "scripted/q")
    assert client.first_choice(load_role(path)) == "scripted/p"
    install_scripted(lt.APIConnectionError(message="refused", llm_provider="scripted", model="p"), GOOD)
    ask(client, path)  # the primary fails, the fallback answers
    assert client.first_choice(load_role(path)) == "scripted/q"  # cooling down
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        client.first_choice(load_role(role_file(tmp_path, "openai/gpt-4o-mini")))


def test_total_outage_raises_model_error_and_records(tmp_path: Path) -> None:
    lt = litellm_module()
    install_scripted(*[lt.APIConnectionError(message="down", llm_provider="s", model="x")] * 2)
    records: list[CallRecord] = []
    with pytest.raises(ModelError, match="reviewer.md: model"):
        ask(ModelClient(records.append, transport_attempts=1, backoff_s=0),
            role_file(tmp_path, "scripted/p", "scripted/q"))
    assert len(records) == 1 and not records[0].ok
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        ask(ModelClient(), role_file(tmp_path, "openai/gpt-4o-mini"))


def test_non_transient_error_is_not_retried(tmp_path: Path) -> None:
    lt = litellm_module()
    bad = lt.AuthenticationError(message="bad key", llm_provider="scripted", model="p")
    fake = install_scripted(bad, GOOD)
    result = ask(ModelClient(transport_attempts=5, backoff_s=0),
                 role_file(tmp_path, "scripted/p", "scripted/q"))
    assert [s.model for s in fake.sent] == ["p", "q"] and result.value is not None


def test_hosted_model_cost_from_offline_cost_map(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-used")
    role = load_role(role_file(tmp_path, "anthropic/claude-sonnet-4-5"))
    lt = litellm_module()
    real = lt.completion
    monkeypatch.setattr(lt, "completion", lambda **kw: real(**kw, mock_response='{"keep": false, "reason": "noise"}'))
    result = ModelClient().structured(role, [{"role": "user", "content": "x"}], Verdict)
    assert result.value == Verdict(keep=False, reason="noise")
    assert result.record.cost_usd > 0 and result.record.prompt_tokens > 0


def test_static_provider_list_matches_litellm() -> None:
    from org.models.names import LITELLM_PROVIDERS

    assert LITELLM_PROVIDERS <= set(litellm_module().provider_list)


def test_scripted_fixture_for_other_tests(scripted_llm, tmp_path: Path) -> None:
    scripted_llm.push(GOOD)
    result = ask(ModelClient(), role_file(tmp_path, "scripted/x"))
    assert result.value is not None and scripted_llm.sent[0].model == "x"


def test_prompted_schema_hint_for_models_without_native_support(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-used")
    lt = litellm_module()
    seen: list[dict] = []
    real = lt.completion

    def fake_completion(**kw):
        seen.append(kw)
        return real(model="openai/gpt-3.5-turbo-instruct", messages=kw["messages"],
                             mock_response='{"keep": true, "reason": "r"}')

    monkeypatch.setattr(lt, "completion", fake_completion)
    monkeypatch.setattr(lt, "supports_response_schema", lambda model: False)
    role = load_role(role_file(tmp_path, "openai/some-old-model"))
    result = ModelClient().structured(role, [{"role": "user", "content": "x"}], Verdict)
    assert result.value is not None
    assert seen[0]["drop_params"] is True
    assert "JSON schema" in seen[0]["messages"][-1]["content"] and '"keep"' in seen[0]["messages"][-1]["content"]


def test_outage_is_remembered_with_its_reason(tmp_path: Path) -> None:
    lt = litellm_module()
    install_scripted(lt.APIConnectionError(message="refused", llm_provider="scripted", model="p"))
    client = ModelClient(transport_attempts=1, backoff_s=0)
    path = role_file(tmp_path, "scripted/p")
    with pytest.raises(ModelError, match="refused"):
        ask(client, path)
    with pytest.raises(ModelError, match="model: scripted/p: .*refused \\(recently\\)"):
        ask(client, path)  # not retried within the cooldown; the reason is kept


def test_role_seed_reaches_providers_that_take_one(tmp_path: Path) -> None:
    path = role_file(tmp_path, "openai/gpt-4o")
    path.write_text(path.read_text().replace("max_attempts", "seed: 5\nmax_attempts"))
    msgs = [{"role": "user", "content": "x"}]
    for model, seeded in [("openai/gpt-4o", True), ("local/gemma3-270m", True),
                          ("anthropic/claude-sonnet-4-5", False)]:  # Anthropic's API has no seed
        kw = client_mod._Call(load_role(path), msgs, Verdict).kwargs(model)
        assert kw.get("seed") == (5 if seeded else None), model
    unseeded = client_mod._Call(load_role(role_file(tmp_path, "openai/gpt-4o")), msgs, Verdict)
    assert "seed" not in unseeded.kwargs("openai/gpt-4o")
