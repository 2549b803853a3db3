"""The store's VOD catalogue and channel recording settings, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.unit import test_store as store_suite
from vilokanam.store import (
    UNSET,
    ChannelNotFound,
    InvalidField,
    RecordingNotFound,
    SessionNotFound,
    SessionState,
    Store,
)

# The store suite's fixtures: an empty store on SQLite and on PostgreSQL.
shared_postgres_url = store_suite.shared_postgres_url
store = store_suite.store


def _ended_session(store: Store, slug: str = "news") -> tuple[int, int]:
    try:
        channel = store.get_channel(slug)
    except ChannelNotFound:
        channel = store.create_channel(slug)[0]
    assert channel.id is not None
    session = store.start_session(channel.id)
    assert session.id is not None
    store.update_session(session.id, state=SessionState.ENDED)
    return channel.id, session.id


def _save(store: Store, channel_id: int, session_id: int, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "session_id": session_id,
        "channel_id": channel_id,
        "prefix": f"streams/{session_id}",
        "storage": "local",
        "renditions": ["source", "240p"],
        "duration_ms": 8_040,
        "segments": 4,
        "size_bytes": 1_234_567,
        "thumbnail": True,
        "retention_days": 7,
    }
    return store.save_recording(**{**fields, **overrides})


def test_save_recording_makes_a_vod(store: Store) -> None:
    channel_id, session_id = _ended_session(store)
    before = datetime.now(UTC)
    recording = _save(store, channel_id, session_id)
    assert recording.session_id == session_id and recording.channel_id == channel_id
    assert (recording.prefix, recording.storage) == (f"streams/{session_id}", "local")
    assert recording.renditions == ["source", "240p"] and recording.thumbnail is True
    assert (recording.duration_ms, recording.segments, recording.size_bytes) == (
        8_040,
        4,
        1_234_567,
    )
    assert before - timedelta(seconds=5) <= recording.created_at <= datetime.now(UTC)
    assert recording.expires_at == recording.created_at + timedelta(days=7)
    session, _ = store.get_session(session_id)
    assert session.recording_location == f"/vod/{session_id}/master.m3u8"


def test_save_recording_is_idempotent_by_session(store: Store) -> None:
    channel_id, session_id = _ended_session(store)
    first = _save(store, channel_id, session_id)
    again = _save(store, channel_id, session_id, segments=5, duration_ms=10_000, retention_days=0)
    assert again.created_at == first.created_at, "a retried save keeps its creation time"
    assert (again.segments, again.duration_ms, again.expires_at) == (5, 10_000, None)
    assert len(store.recordings()) == 1


def test_save_recording_of_an_unknown_session(store: Store) -> None:
    channel_id, _ = _ended_session(store)
    with pytest.raises(SessionNotFound):
        _save(store, channel_id, 999)


def test_list_get_and_filter(store: Store) -> None:
    news, first = _ended_session(store, "news")
    _, unrecorded = _ended_session(store, "news")
    arts, third = _ended_session(store, "arts")
    _save(store, news, first)
    _save(store, arts, third)
    rows = store.recordings()
    assert [recording.session_id for recording, _, _ in rows] == [third, first], "newest first"
    assert [channel.slug for _, _, channel in rows] == ["arts", "news"]
    assert [r.session_id for r, _, _ in store.recordings(news)] == [first]
    page = store.recordings(limit=1)
    assert [r.session_id for r, _, _ in page] == [third], "a page, newest first"
    after = store.recordings(limit=1, before_id=page[-1][0].session_id)
    assert [r.session_id for r, _, _ in after] == [first]
    assert store.recordings(limit=5, before_id=first) == []
    with pytest.raises(InvalidField, match="limit"):
        store.recordings(limit=0)
    recording, session, channel = store.get_recording(first)
    assert (recording.session_id, session.id, channel.slug) == (first, first, "news")
    with pytest.raises(RecordingNotFound, match=f"no VOD {unrecorded}"):
        store.get_recording(unrecorded)
    assert issubclass(RecordingNotFound, SessionNotFound), "an API/CLI 404 like a session"


def test_delete_recording_keeps_the_session(store: Store) -> None:
    channel_id, session_id = _ended_session(store)
    _save(store, channel_id, session_id)
    deleted = store.delete_recording(session_id)
    assert deleted.session_id == session_id
    assert store.recordings() == []
    session, _ = store.get_session(session_id)
    assert session.recording_location is None and session.state is SessionState.ENDED
    with pytest.raises(RecordingNotFound):
        store.delete_recording(session_id)


def test_expired_recordings(store: Store) -> None:
    channel_id, week = _ended_session(store)
    _, forever = _ended_session(store)
    _, day = _ended_session(store)
    _save(store, channel_id, week, retention_days=7)
    _save(store, channel_id, forever, retention_days=0)
    _save(store, channel_id, day, retention_days=1)
    now = datetime.now(UTC)
    assert store.expired_recordings(now) == []
    in_two_days = [r.session_id for r in store.expired_recordings(now + timedelta(days=2))]
    assert in_two_days == [day]
    later = store.expired_recordings(now + timedelta(days=3650))
    assert [r.session_id for r in later] == [day, week], "oldest expiry first; 0 never expires"


def test_deleting_a_channel_takes_its_recordings(store: Store) -> None:
    channel_id, session_id = _ended_session(store)
    _save(store, channel_id, session_id)
    store.delete_channel("news")
    assert store.recordings() == []


# -- channel settings -------------------------------------------------------------------------
def test_channel_recording_overrides(store: Store) -> None:
    channel, _ = store.create_channel("news", record=False, vod_retention_days=3)
    assert (channel.record, channel.vod_retention_days) == (False, 3)
    plain, _ = store.create_channel("arts")
    assert (plain.record, plain.vod_retention_days) == (None, None), "server defaults"

    updated = store.update_channel("news", record=True)
    assert (updated.record, updated.vod_retention_days) == (True, 3), "only what is given"
    updated = store.update_channel("news", title="News", record=UNSET)
    assert updated.record is True
    updated = store.update_channel("news", record=None, vod_retention_days=None)
    assert (updated.record, updated.vod_retention_days) == (None, None), "None clears"
    updated = store.update_channel("news", vod_retention_days=0)
    assert store.get_channel("news").vod_retention_days == 0 == updated.vod_retention_days


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("record", "yes"),
        ("record", 1),
        ("vod_retention_days", -1),
        ("vod_retention_days", 1.5),
        ("vod_retention_days", True),
        ("vod_retention_days", 36501),
    ],
)
def test_invalid_recording_settings_are_named(store: Store, field: str, value: Any) -> None:
    with pytest.raises(InvalidField) as info:
        store.create_channel("news", **{field: value})
    assert info.value.field == field
    store.create_channel("arts")
    with pytest.raises(InvalidField):
        store.update_channel("arts", **{field: value})
