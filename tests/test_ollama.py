"""The Ollama path against a loopback stand-in server; `nightlab models check/pull`."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from org.cli import cli, main
from org.errors import InputError
from org.models import client as client_mod
from org.models.client import ModelClient
from org.models.preflight import check_org, first_blocking_problem, pull
from org.roles import load_org, load_role
from tests.ollama_standin import OllamaStandIn

MODEL = "qwen2.5-coder:7b"


class Choice(BaseModel):
    knob: str
    move: str


@pytest.fixture(autouse=True)
def _fresh_outages():
    client_mod.forget_outages()
    yield
    client_mod.forget_outages()


@pytest.fixture
def ollama(monkeypatch):
    with OllamaStandIn([MODEL]) as server:
        monkeypatch.setenv("OLLAMA_HOST", server.host)
        yield server


def dead_host() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def write_org(tmp_path: Path, proposer: str, director: str, director_fallback: str | None) -> Path:
    d = tmp_path / "roles" / "t"
    d.mkdir(parents=True)
    (d / "org.md").write_text("---\nname: t\nroles:\n  proposer: proposer.md\n  director: director.md\n---\n")
    (d / "proposer.md").write_text(f"---\nmodel: {proposer}\nmode: knob\n---\nPropose.\n")
    fb = f"fallback: {director_fallback}\n" if director_fallback else ""
    (d / "director.md").write_text(f"---\nmodel: {director}\n{fb}---\nDirect.\n")
    return d


def test_structured_call_through_ollama_chat(ollama: OllamaStandIn, tmp_path: Path) -> None:
    path = tmp_path / "p.md"
    path.write_text(f"---\nmodel: ollama_chat/{MODEL}\ntemperature: 0.1\n---\nYou propose.\n")
    role = load_role(path)
    ollama.replies.extend(["no json here", '{"knob": "DEPTH", "move": "x2"}'])
    result = ModelClient().structured(role, [{"role": "system", "content": role.render()},
                                             {"role": "user", "content": "go"}], Choice)
    assert result.value == Choice(knob="DEPTH", move="x2")
    rec = result.record
    assert rec.ok and rec.attempts == 2 and rec.model_used == f"ollama_chat/{MODEL}"
    assert (rec.prompt_tokens, rec.completion_tokens, rec.cost_usd) == (24, 14, 0.0)
    chats = [body for method, p, body in ollama.requests if p == "/api/chat"]
    assert len(chats) == 2
    assert chats[0]["model"] == MODEL and chats[0]["messages"][0]["content"] == "You propose."
    assert chats[0]["format"]["properties"]["knob"]["type"] == "string"  # schema passed to Ollama
    assert "not valid" in chats[1]["messages"][-1]["content"]


def test_ollama_outage_falls_back_to_other_model(ollama: OllamaStandIn, tmp_path: Path, monkeypatch) -> None:
    from tests.fakes import install_scripted

    monkeypatch.setenv("OLLAMA_HOST", dead_host())
    fake = install_scripted('{"knob": "DEPTH", "move": "+1"}')
    path = tmp_path / "p.md"
    path.write_text(f"---\nmodel: ollama_chat/{MODEL}\nfallback: scripted/backup\n---\nYou propose.\n")
    result = ModelClient(backoff_s=0.01).structured(load_role(path), [{"role": "user", "content": "go"}], Choice)
    assert result.value is not None and result.record.model_used == "scripted/backup"
    assert len(fake.sent) == 1


def test_check_org_reports_each_model(ollama: OllamaStandIn, tmp_path: Path) -> None:
    org = load_org(write_org(tmp_path, f"ollama_chat/{MODEL}", "anthropic/claude-sonnet-4-5", "local/gemma3-270m"))
    checks = check_org(org)
    assert [(c.kind, c.field, c.ok) for c in checks] == [
        ("proposer", "model", True), ("director", "model", False), ("director", "fallback", True)]
    assert "ANTHROPIC_API_KEY is not set" in checks[1].detail
    assert checks[0].structured.startswith("json schema") and checks[2].structured.startswith("grammar")
    assert first_blocking_problem(checks) is None  # the director runs on its fallback
    strict = first_blocking_problem(checks, strict=True)
    assert strict is not None and strict.field == "model" and strict.path.endswith("director.md")


def test_models_check_cli_exit_2_on_missing_model(ollama: OllamaStandIn, tmp_path: Path, capsys) -> None:
    org_dir = write_org(tmp_path, "ollama_chat/llama3.2:1b", "local/gemma3-270m", None)
    with pytest.raises(SystemExit) as e:
        main(["models", "check", "--org", str(org_dir)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{org_dir / 'proposer.md'}: model: ollama_chat/llama3.2:1b" in err[0]
    assert "not pulled" in err[0] and "nightlab models pull ollama_chat/llama3.2:1b" in err[0]


def test_models_check_cli_table_ok(ollama: OllamaStandIn, tmp_path: Path) -> None:
    org_dir = write_org(tmp_path, f"ollama_chat/{MODEL}", "local/gemma3-270m", None)
    result = CliRunner().invoke(cli, ["models", "check", "--org", str(org_dir)])
    assert result.exit_code == 0, result.output
    assert "proposer" in result.output and "director" in result.output and "FAIL" not in result.output


def test_unreachable_server_is_one_clear_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OLLAMA_HOST", dead_host())
    org_dir = write_org(tmp_path, f"ollama_chat/{MODEL}", "local/gemma3-270m", None)
    with pytest.raises(SystemExit) as e:
        main(["models", "check", "--org", str(org_dir)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "proposer.md: model:" in err and "not reachable" in err


def test_pull_adds_model(ollama: OllamaStandIn) -> None:
    lines: list[str] = []
    pull("ollama_chat/llama3.2:1b", echo=lines.append)
    assert lines == ["pulling manifest", "verifying sha256 digest", "success"]
    assert "llama3.2:1b" in ollama.models
    result = CliRunner().invoke(cli, ["models", "pull", "phi3:mini"])
    assert result.exit_code == 0 and "pulled phi3:mini" in result.output
    with pytest.raises(InputError, match="not an Ollama model"):
        pull("openai/gpt-4o")


@pytest.mark.parametrize("proposer, director, field, words", [
    (f"ollama_chat/{MODEL}", "local/gemma3-270m", "proposer.md: model", "not reachable"),
    ("local/gemma3-270m", "anthropic/claude-sonnet-4-5", "director.md: model", "ANTHROPIC_API_KEY is not set"),
])
def test_campaign_preflight_refuses_before_writing(tmp_path: Path, monkeypatch, capsys,
                                                   proposer, director, field, words) -> None:  # fmt: skip
    """`nightlab campaign` preflights every role: no usable model is bad input (exit 2), found
    before a campaign directory, a worktree or a branch exists."""
    from org import campaign as c
    from tests.tiny import make_repo

    monkeypatch.setenv("OLLAMA_HOST", dead_host())
    program = make_repo(tmp_path / "repo")
    org_dir = write_org(tmp_path, proposer, director, None)
    with pytest.raises(SystemExit) as e:
        main(["campaign", "--program", str(program), "--org", str(org_dir), "--tag", "pf"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and words in err[0] and "no fallback" in err[0]
    assert not c.campaign_dir("pf").exists()
