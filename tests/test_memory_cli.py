"""`nightlab memory ...` end to end (store under NIGHTLAB_HOME), and the Ollama embedding path
against a loopback stand-in for Ollama's /api/embed."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from memory import NoteIn, NoteStore
from org.cli import COMMANDS, main
from org.memory_commands import memory
from org.settings import home_dir


def test_registered_lazily() -> None:
    assert COMMANDS["memory"] == "org.memory_commands:memory"


def test_search_show_stats_reindex(isolated_state: Path) -> None:
    store = NoteStore(home_dir())  # NIGHTLAB_HOME from the autouse fixture
    assert store.home == isolated_state
    store.add_experiment(
        "night-1",
        "nano",
        hypothesis="more capacity",
        change="DEPTH 4 -> 5",
        status="keep",
        metric_delta=-0.01,
        knob_move="DEPTH 4->5",
    )
    store.add_direction("night-2", "nano", "Look at the optimizer next.")
    store.close()
    runner = CliRunner()
    res = runner.invoke(memory, ["search", "transformer depth", "-k", "1"])
    assert res.exit_code == 0, res.output
    assert "DEPTH 4 -> 5" in res.output and "night-1" in res.output
    res = runner.invoke(memory, ["show", "night-2"])
    assert (
        res.exit_code == 0 and "Look at the optimizer" in res.output and "DEPTH" not in res.output
    )
    res = runner.invoke(memory, ["stats", "--json"])
    data = json.loads(res.output)
    assert data["notes"] == 2 and data["indexed"] == 2 and data["in_sync"] is True
    res = runner.invoke(memory, ["reindex"])
    assert res.exit_code == 0 and "reindexed 2 notes" in res.output


def test_corrupt_db_is_a_clear_cli_error(
    isolated_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (isolated_state / "memory.db").write_bytes(b"\x00garbage" * 64)
    with pytest.raises(SystemExit) as e:
        main(["memory", "stats"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert str(isolated_state / "memory.db") in err and "refusing to touch it" in err


def test_unknown_embedding_is_bad_input_at_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """memory's SpecError reaches the edge as InputError would: one line, exit 2."""
    with pytest.raises(SystemExit) as e:
        main(["memory", "stats", "--embedding", "word2vec"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "nightlab: error: embedding: unknown embedding 'word2vec': use 'minilm' or 'ollama:<model>[@url]'\n"


class _FakeOllama(BaseHTTPRequestHandler):
    """Speaks just enough of Ollama: /api/tags and /api/embed with deterministic bag-of-words
    vectors, so similar texts get similar embeddings."""

    calls: list[dict] = []  # noqa: RUF012 - shared record of what the stand-in was sent

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send({"models": [{"name": "fake-embed", "model": "fake-embed"}]})

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeOllama.calls.append({"path": self.path, **req})
        texts = req["input"] if isinstance(req["input"], list) else [req["input"]]
        self._send({"model": req["model"], "embeddings": [self._vec(t) for t in texts]})

    @staticmethod
    def _vec(text: str, dim: int = 64) -> list[float]:
        v = [0.0] * dim
        for word in text.lower().split():
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]


@pytest.fixture()
def fake_ollama() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOllama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ollama_embedding_is_selectable(tmp_path: Path, fake_ollama: str) -> None:
    store = NoteStore(tmp_path, embedding=f"ollama:fake-embed@{fake_ollama}")
    for text in ("warmup steps waste budget", "depth adds capacity", "learning rate too high"):
        store.add_note(NoteIn(campaign="c", target="nano", kind="insight", text=text))
    assert store.search("capacity from depth", 1)[0].text == "depth adds capacity"
    assert _FakeOllama.calls and all(
        c["path"] == "/api/embed" and c["model"] == "fake-embed" for c in _FakeOllama.calls
    )
    assert store.index.name == "notes-ollama-fake-embed"


def test_an_org_picks_its_memory_embedding(tmp_path: Path, fake_ollama: str, monkeypatch) -> None:
    """`embedding:` in org.md reaches the campaign's memory; a model the server lacks is refused
    (naming org.md and the field) before the campaign writes anything."""
    import shutil

    from org import campaign as c
    from org.errors import InputError
    from org.roles import load_org
    from tests.scripted import ScriptedClient
    from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo

    roles = Path(__file__).resolve().parents[1] / "roles"
    org_dir = tmp_path / "org"
    shutil.copytree(roles / "tiered", org_dir)
    org_md = org_dir / "org.md"
    text = org_md.read_text()
    org_md.write_text(text.replace("---\n", f"---\nembedding: ollama:fake-embed@{fake_ollama}\n", 1))
    assert load_org(org_dir).spec.embedding == f"ollama:fake-embed@{fake_ollama}"

    program = make_repo(tmp_path / "repo")
    client = ScriptedClient(default={"proposer": knob("LR", "x2"), "director": DIRECTIVE, "reviewer": APPROVE})
    _FakeOllama.calls.clear()
    c.start(program, org_dir, tag="emb", max_experiments=1, models=client)
    assert any(call["path"] == "/api/embed" for call in _FakeOllama.calls)  # the note was embedded there
    store = NoteStore(home_dir(), embedding=f"ollama:fake-embed@{fake_ollama}")
    assert [n.kind for n in store.notes(campaign="emb")].count("experiment") == 1
    assert store.index.name == "notes-ollama-fake-embed" and store.index.count() >= 1

    org_md.write_text(text.replace("---\n", f"---\nembedding: ollama:not-pulled@{fake_ollama}\n", 1))
    with pytest.raises(InputError, match="org.md: embedding: .*not-pulled.* is not pulled"):
        c.start(program, org_dir, tag="emb2", max_experiments=1, models=client)
    assert not c.campaign_dir("emb2").exists()

    org_md.write_text(text.replace("---\n", "---\nembedding: word2vec\n", 1))
    with pytest.raises(InputError, match="org.md: embedding"):
        load_org(org_dir)
