"""Every test runs offline with all nightlab state in temp dirs.

NIGHTLAB_HOME (campaigns, ledgers, memory) is fresh per test. NIGHTLAB_CACHE (prepared data,
tokenizers, assembled model weights) is content-addressed and immutable once written, so one
temp cache is shared by the whole session to avoid rebuilding it in every test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("nightlab-cache")


@pytest.fixture(scope="session")
def prepared_cpu(session_cache) -> Path:
    """The real offline cpu-preset cache, built once per session by the CLI."""
    env = {**os.environ, "NIGHTLAB_CACHE": str(session_cache), "PYTHONPATH": str(REPO)}
    # a named split salt: the same split every session, so results repeat (a real cache's is secret)
    out = subprocess.run([sys.executable, "-m", "trainer.prepare", "--preset", "cpu", "--split-salt", "6e6c"], env=env,
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return session_cache


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, session_cache, monkeypatch):
    home = tmp_path / "nightlab-home"
    home.mkdir()
    monkeypatch.setenv("NIGHTLAB_HOME", str(home))
    monkeypatch.setenv("NIGHTLAB_CACHE", str(session_cache))
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "OLLAMA_HOST"):
        monkeypatch.delenv(key, raising=False)
    return home


@pytest.fixture
def scripted_llm():
    """A fresh `scripted/` provider (tests/fakes.py): push replies, read `.sent` afterwards.

    Role files in tests can use `model: scripted/anything`. Outage memory is cleared so a
    fallback test does not leak into the next test."""
    from org.models import forget_outages
    from tests.fakes import install_scripted

    forget_outages()
    yield install_scripted()
    forget_outages()
