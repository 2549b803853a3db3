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
    assert bad.exit_code == 2 and "slug: 2-63 characters of a-z" in bad.output
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


def test_update_show_and_revoke(env: Path) -> None:
    created = json.loads(runner.invoke(app, ["channel", "create", "news", "--json"]).output)
    result = runner.invoke(
        app,
        ["channel", "update", "news", "--title", "Evening news", "--category", "news",
         "--tag", "daily", "--tag", "live", "--price", "25", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    updated = json.loads(result.output)
    assert (updated["title"], updated["category"], updated["tags"]) == (
        "Evening news",
        "news",
        ["daily", "live"],
    )
    assert updated["price_per_second"] == 25
    ladder = '[{"name": "240p", "height": 240, "video_bitrate": 400000}]'
    result = runner.invoke(app, ["channel", "update", "news", "--ladder", ladder, "--json"])
    assert json.loads(result.output)["ladder"] == [
        {"name": "240p", "height": 240, "video_bitrate": 400000}
    ]
    shown = runner.invoke(app, ["channel", "show", "news"])
    assert "Evening news" in shown.output and "240p (400 kb/s)" in shown.output
    assert created["stream_key"] not in shown.output

    revoked = runner.invoke(app, ["channel", "revoke-key", "news", "--json"])
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(revoked.output)["key_active"] is False
    store = Store(f"sqlite:///{env / 'vilokanam.db'}")
    assert store.channel_for_key(created["stream_key"]) is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["channel", "update", "news", "--price", "-1"], "price_per_second"),
        (["channel", "update", "news", "--ladder", '[{"name": "x"}]'], "ladder.0.height"),
        (["channel", "update", "news"], "nothing to change"),
        (["channel", "show", "nope"], "no channel 'nope'"),
        (["history", "list", "--limit", "0"], "--limit"),
        (["history", "show", "42"], "42"),
    ],
)
def test_bad_input_is_named(env: Path, args: list[str], expected: str) -> None:
    runner.invoke(app, ["channel", "create", "news"])
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert expected in result.output


def test_delete_and_history(env: Path) -> None:
    runner.invoke(app, ["channel", "create", "news"])
    store = Store(f"sqlite:///{env / 'vilokanam.db'}")
    channel = store.get_channel("news")
    assert channel.id is not None
    session = store.start_session(channel.id, "10.0.0.5:5000")
    assert session.id is not None
    store.update_session(session.id, state="ended", segments=12, peak_viewers=3)
    listing = json.loads(runner.invoke(app, ["history", "list", "--json"]).output)
    assert [(s["channel"], s["segments"], s["peak_viewers"]) for s in listing] == [("news", 12, 3)]
    table = runner.invoke(app, ["history", "list"], env={"COLUMNS": "200"}).output
    assert "news" in table and "peak viewers" in table
    one = json.loads(runner.invoke(app, ["history", "show", str(session.id), "--json"]).output)
    assert one["publisher"] == "10.0.0.5:5000" and one["duration_seconds"] >= 0

    refused = runner.invoke(app, ["channel", "delete", "news"], input="n\n")
    assert refused.exit_code != 0 and store.list_channels()
    deleted = runner.invoke(app, ["channel", "delete", "news", "--yes"])
    assert deleted.exit_code == 0, deleted.output
    assert store.list_channels() == [] and store.history() == []


def test_live_commands_without_a_server_say_how(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("VILOKANAM_HTTP_PORT", str(free_port()))
    result = runner.invoke(app, ["stream", "list"])
    assert result.exit_code == 1
    assert "vilokanam serve" in result.output and "--server" in result.output
    remote = runner.invoke(app, ["status", "--server", "http://127.0.0.1:9", "--token", "t" * 20])
    assert remote.exit_code == 1 and "cannot reach http://127.0.0.1:9" in remote.output
    no_token = runner.invoke(app, ["status", "--server", "http://127.0.0.1:9"])
    assert no_token.exit_code == 2 and "--token" in no_token.output


def test_db_upgrade_and_status(env: Path) -> None:
    before = runner.invoke(app, ["db", "status"])
    assert before.exit_code == 0 and "revision none" in before.output
    assert "vilokanam db upgrade" in before.output
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0 and "Applied 0001" in upgraded.output
    again = runner.invoke(app, ["db", "upgrade"])
    assert "up to date" in again.output
    after = runner.invoke(app, ["db", "status"])
    assert "up to date" in after.output
