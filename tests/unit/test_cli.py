"""The `vilokanam channel` commands against a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vilokanam.cli.main import app
from vilokanam.store import Store

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VILOKANAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VILOKANAM_PUBLIC_HOST", "stream.example")
    return tmp_path


def test_create_prints_a_working_key_once(env: Path) -> None:
    result = runner.invoke(app, ["channel", "create", "news", "--title", "News", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["rtmp_url"] == "rtmp://stream.example:1935/live"
    assert info["playback_url"] == "http://stream.example:8080/live/news/master.m3u8"
    store = Store(f"sqlite:///{env / 'vilokanam.db'}")
    assert store.channel_for_key(info["stream_key"]).slug == "news"  # type: ignore[union-attr]
    listing = runner.invoke(app, ["channel", "list", "--json"])
    assert [row["slug"] for row in json.loads(listing.output)] == ["news"]
    assert info["stream_key"] not in listing.output


def test_rotate_key_invalidates_the_old_one(env: Path) -> None:
    old = json.loads(runner.invoke(app, ["channel", "create", "news", "--json"]).output)
    new = json.loads(runner.invoke(app, ["channel", "rotate-key", "news", "--json"]).output)
    store = Store(f"sqlite:///{env / 'vilokanam.db'}")
    assert store.channel_for_key(old["stream_key"]) is None
    assert store.channel_for_key(new["stream_key"]) is not None


def test_errors_name_the_problem(env: Path) -> None:
    bad = runner.invoke(app, ["channel", "create", "Bad Slug"])
    assert bad.exit_code == 1 and "invalid slug" in bad.output
    runner.invoke(app, ["channel", "create", "news"])
    dup = runner.invoke(app, ["channel", "create", "news"])
    assert dup.exit_code == 1 and "already exists" in dup.output
    missing = runner.invoke(app, ["channel", "rotate-key", "nope"])
    assert missing.exit_code == 1 and "no channel 'nope'" in missing.output


def test_bad_config_value_fails_naming_the_key(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VILOKANAM_HLS_SEGMENT_FORMAT", "webm")
    result = runner.invoke(app, ["channel", "list"])
    assert result.exit_code == 2
    assert "hls.segment_format" in result.output and "'fmp4' or 'mpegts'" in result.output


def test_table_output(env: Path) -> None:
    runner.invoke(app, ["channel", "create", "news"])
    result = runner.invoke(app, ["channel", "list"])
    assert result.exit_code == 0 and "news" in result.output and "slug" in result.output
