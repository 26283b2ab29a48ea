from __future__ import annotations

from pathlib import Path

from org import settings


def test_dirs_follow_env_each_call(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NIGHTLAB_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "c"))
    assert settings.home_dir() == tmp_path / "h" and (tmp_path / "h").is_dir()
    assert settings.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.setenv("NIGHTLAB_HOME", str(tmp_path / "h2"))
    assert settings.home_dir() == tmp_path / "h2"


def test_defaults_are_platform_dirs(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NIGHTLAB_HOME")
    monkeypatch.delenv("NIGHTLAB_CACHE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert settings.home_dir() == tmp_path / "data" / "nightlab"
    assert settings.cache_dir() == tmp_path / "cache" / "nightlab"


def test_local_threads(monkeypatch) -> None:
    import os

    import pytest

    from org.errors import InputError

    monkeypatch.delenv("NIGHTLAB_LOCAL_THREADS", raising=False)
    assert settings.local_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv("NIGHTLAB_LOCAL_THREADS", "1")
    assert settings.local_threads() == 1
    monkeypatch.setenv("NIGHTLAB_LOCAL_THREADS", "two")
    with pytest.raises(InputError, match="NIGHTLAB_LOCAL_THREADS"):
        settings.local_threads()


def test_ollama_host(monkeypatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert settings.ollama_host() == "http://127.0.0.1:11434"
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box:11434/")
    assert settings.ollama_host() == "http://gpu-box:11434"
    monkeypatch.setenv("OLLAMA_HOST", "https://o.example")
    assert settings.ollama_host() == "https://o.example"
