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
