"""The store on SQLite and PostgreSQL: channels, keys, sessions, history, and its migrations."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from tests.postgres import create_database
from vilokanam.store import (
    SLUG_RULE,
    ChannelExists,
    ChannelNotFound,
    InvalidField,
    SessionNotFound,
    SessionState,
    Store,
    StoreError,
    migrate,
)
from vilokanam.store.engine import make_engine, normalize_url
from vilokanam.store.keys import hash_stream_key

BACKENDS = ["sqlite", "postgresql"]
RUNG = {"name": "720p", "height": 720, "video_bitrate": 3_000_000}
TWO_RUNGS = [RUNG, {**RUNG, "name": "360p", "height": 360}]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_db_url"))
    return f"sqlite:///{tmp_path / 'data' / 'vilokanam.db'}"


@pytest.fixture(scope="session")
def shared_postgres_url(postgres_url: str) -> str:
    """One PostgreSQL database at head for the store tests, emptied before each (a new database
    per test costs ~0.3 s; migration tests get fresh ones through ``url``)."""
    url = create_database(postgres_url)
    migrate.upgrade(url)
    return url


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store at the head revision on each backend."""
    if request.param == "postgresql":
        store = Store(request.getfixturevalue("shared_postgres_url"))
        tables = ", ".join(table.name for table in SQLModel.metadata.sorted_tables)
        with store.engine.begin() as connection:
            connection.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    else:
        store = Store(f"sqlite:///{tmp_path / 'data' / 'vilokanam.db'}")
    yield store
    store.close()


# -- channels ------------------------------------------------------------------
def test_create_list_get(store: Store) -> None:
    channel, key = store.create_channel(
        "news", "News", category="Talk", tags=["a", "b"], price_per_second=5, ladder=[RUNG]
    )
    store.create_channel("arts")
    assert (channel.slug, channel.title, channel.category) == ("news", "News", "Talk")
    assert (channel.tags, channel.price_per_second, channel.ladder) == (["a", "b"], 5, [RUNG])
    assert [c.slug for c in store.list_channels()] == ["arts", "news"]
    fetched = store.get_channel("news")
    assert fetched.id == channel.id and fetched.tags == ["a", "b"] and fetched.ladder == [RUNG]
    assert store.get_channel_by_id(channel.id or 0).slug == "news"
    assert store.get_channel("arts").title == "arts", "the title defaults to the slug"
    assert store.channel_for_key(key).slug == "news"  # type: ignore[union-attr]
    assert channel.stream_key_hash == hash_stream_key(key) and key not in repr(fetched)


def test_datetimes_are_aware_utc(store: Store) -> None:
    before = datetime.now(UTC)
    store.create_channel("news")
    channel = store.get_channel("news")
    for value in (channel.created_at, channel.key_rotated_at, channel.updated_at):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=5) <= value <= datetime.now(UTC)
    stream = store.start_session(channel.id or 0)
    at = datetime(2030, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    stream = store.update_session(stream.id or 0, state=SessionState.LIVE, at=at)
    assert store.get_session(stream.id or 0)[0].live_at == at


def test_lookups_of_missing_things(store: Store) -> None:
    with pytest.raises(ChannelNotFound, match="no channel 'nope'"):
        store.get_channel("nope")
    with pytest.raises(ChannelNotFound):
        store.get_channel_by_id(999)
    for call in (store.rotate_key, store.revoke_key, store.delete_channel, store.update_channel):
        with pytest.raises(ChannelNotFound):
            call("nope")
    with pytest.raises(SessionNotFound, match="999"):
        store.get_session(999)
    with pytest.raises(SessionNotFound):
        store.update_session(999, segments=1)
    with pytest.raises(ChannelNotFound):
        store.history("nope")
    assert store.channel_for_key("") is None and store.channel_for_key("sk_unknown") is None


def test_duplicate_and_invalid_slugs(store: Store) -> None:
    store.create_channel("news")
    with pytest.raises(ChannelExists, match="'news' already exists"):
        store.create_channel("news")
    for bad in ("Bad Slug", "x", "-dash", "a" * 64, ""):
        with pytest.raises(InvalidField) as info:
            store.create_channel(bad)
        assert info.value.field == "slug" and SLUG_RULE in str(info.value)
    assert [c.slug for c in store.list_channels()] == ["news"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"title": "  New title "}, {"title": "New title"}),
        ({"category": "Music"}, {"category": "Music"}),
        ({"tags": ["live", "dj", "live", " x "]}, {"tags": ["live", "dj", "x"]}),
        ({"tags": []}, {"tags": []}),
        ({"price_per_second": 0}, {"price_per_second": 0}),
        ({"price_per_second": 2**63 - 1}, {"price_per_second": 2**63 - 1}),
        ({"ladder": TWO_RUNGS}, {"ladder": TWO_RUNGS}),
        ({"ladder": []}, {"ladder": []}),
        ({"ladder": None}, {"ladder": None}),
    ],
)
def test_update_changes_only_given_fields(
    store: Store, changes: dict[str, Any], expected: dict[str, Any]
) -> None:
    original, _ = store.create_channel(
        "news", "News", category="Talk", tags=["t"], price_per_second=7, ladder=[RUNG]
    )
    updated = store.update_channel("news", **changes)
    again = store.get_channel("news")
    for name in ("title", "category", "tags", "price_per_second", "ladder"):
        want = expected.get(name, getattr(original, name))
        assert getattr(updated, name) == want == getattr(again, name), name
    assert again.updated_at > original.updated_at
    assert again.created_at == original.created_at


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("title", "x" * 201, "at most 200"),
        ("title", 5, "must be text"),
        ("category", "c" * 65, "at most 64"),
        ("tags", "live", "a list of strings"),
        ("tags", [""], "1-32 characters"),
        ("tags", ["t" * 33], "1-32 characters"),
        ("tags", [3], "1-32 characters"),
        ("tags", [f"t{i}" for i in range(21)], "at most 20"),
        ("price_per_second", -1, ">= 0"),
        ("price_per_second", 1.5, ">= 0"),
        ("price_per_second", True, ">= 0"),
        ("price_per_second", "5", ">= 0"),
        ("price_per_second", 2**63, ">= 0"),
        ("ladder", {"name": "720p"}, "a list of rungs"),
        ("ladder", [{**RUNG, "height": 721}], "height"),
        ("ladder", [{**RUNG, "video_bitrate": 1}], "video_bitrate"),
        ("ladder", [{**RUNG, "fps": 30}], "fps"),
        ("ladder", [RUNG, RUNG], "unique"),
        ("ladder", [{**RUNG, "name": "source"}], "not 'source'"),
    ],
)
def test_invalid_values_name_the_field(store: Store, field: str, value: Any, words: str) -> None:
    store.create_channel("news", "News")
    with pytest.raises(InvalidField) as info:
        store.update_channel("news", **{field: value})
    assert info.value.field == field and field in str(info.value) and words in str(info.value)
    assert isinstance(info.value, StoreError) and isinstance(info.value, ValueError)
    with pytest.raises(InvalidField):
        store.create_channel("other", **{field: value})
    assert store.get_channel("news").title == "News"
    assert [c.slug for c in store.list_channels()] == ["news"]


def test_delete_takes_the_sessions_along(store: Store) -> None:
    news, key = store.create_channel("news")
    arts, _ = store.create_channel("arts")
    for channel in (news, news, arts):
        store.start_session(channel.id or 0)
    deleted = store.delete_channel("news")
    assert deleted.slug == "news"
    assert [c.slug for c in store.list_channels()] == ["arts"]
    assert [s.channel_id for s in store.sessions()] == [arts.id]
    assert store.channel_for_key(key) is None
    store.create_channel("news")  # the slug is free again


def test_rotate_and_revoke_keys(store: Store) -> None:
    channel, first = store.create_channel("news")
    second = store.rotate_key("news")
    assert second != first
    assert store.channel_for_key(first) is None
    assert store.channel_for_key(second).slug == "news"  # type: ignore[union-attr]
    revoked = store.revoke_key("news")
    assert revoked.stream_key_hash is None and revoked.key_rotated_at > channel.key_rotated_at
    assert store.channel_for_key(second) is None and store.channel_for_key(first) is None
    store.create_channel("arts")
    store.revoke_key("arts")  # two revoked keys (NULL) do not collide on the unique index
    third = store.rotate_key("news")
    assert store.channel_for_key(third).slug == "news"  # type: ignore[union-attr]
    assert store.channel_for_key(second) is None


# -- sessions, history, counts -------------------------------------------------------
def test_session_lifecycle(store: Store) -> None:
    channel, _ = store.create_channel("news")
    stream = store.start_session(channel.id or 0, publisher="10.0.0.5:50000")
    assert (stream.state, stream.publisher, stream.peak_viewers) == (
        "starting",
        "10.0.0.5:50000",
        0,
    )
    store.update_session(stream.id or 0, state=SessionState.LIVE, segments=3, peak_viewers=9)
    stream = store.update_session(stream.id or 0, peak_viewers=4, segments=5)
    assert (stream.state, stream.segments, stream.peak_viewers) == (SessionState.LIVE, 5, 9)
    ended = store.update_session(stream.id or 0, state="ended", end_reason="publisher left")
    assert ended.ended_at is not None and ended.end_reason == "publisher left"
    assert ended.live_at is not None and ended.live_at <= ended.ended_at
    got, owner = store.get_session(stream.id or 0)
    assert (got.state, owner.slug, got.recording_location) == (SessionState.ENDED, "news", None)
    assert [s.id for s in store.sessions(channel.id)] == [stream.id]


def test_session_ids_are_never_reused(store: Store) -> None:
    """Ids name media folders and segment URLs: the newest sessions going with their channel
    must not hand their ids out again (SQLite reuses a plain INTEGER key's largest ids)."""
    kept, _ = store.create_channel("kept")
    gone, _ = store.create_channel("gone")
    first = store.start_session(kept.id or 0).id
    taken = [store.start_session(gone.id or 0).id for _ in range(2)]
    store.delete_channel("gone")
    later = store.start_session(kept.id or 0).id
    assert first is not None and later is not None and later > max(i or 0 for i in taken)


def test_end_unfinished_sessions(store: Store) -> None:
    channel, _ = store.create_channel("news")
    ids = [store.start_session(channel.id or 0).id or 0 for _ in range(3)]
    store.update_session(ids[1], state=SessionState.LIVE)
    store.update_session(ids[2], state=SessionState.ENDED)
    assert store.end_unfinished_sessions() == ids[:2]
    assert {s.state for s in store.sessions()} == {SessionState.ENDED}
    assert store.end_unfinished_sessions() == []


def test_history_pages_newest_first(store: Store) -> None:
    news, _ = store.create_channel("news")
    arts, _ = store.create_channel("arts")
    ids = [store.start_session((news if i % 3 else arts).id or 0).id or 0 for i in range(7)]
    everything = store.history()
    assert [s.id for s, _ in everything] == sorted(ids, reverse=True)
    assert all(s.channel_id == c.id for s, c in everything)
    pages: list[int] = []
    before: int | None = None
    while page := store.history("news", limit=2, before_id=before):
        assert len(page) <= 2 and {c.slug for _, c in page} == {"news"}
        pages += [s.id or 0 for s, _ in page]
        before = page[-1][0].id
    assert pages == [ids[i] for i in (5, 4, 2, 1)]
    assert store.history("arts", before_id=min(ids)) == []
    with pytest.raises(InvalidField, match="limit"):
        store.history(limit=0)


def test_counts(store: Store) -> None:
    assert store.counts() == {
        "channels": 0, "sessions": 0, "live_sessions": 0, "active_sessions": 0,
    }  # fmt: skip
    channel, _ = store.create_channel("news")
    store.create_channel("arts")
    ids = [store.start_session(channel.id or 0).id or 0 for _ in range(3)]
    store.update_session(ids[0], state=SessionState.ENDED)
    store.update_session(ids[1], state=SessionState.LIVE)
    assert store.counts() == {
        "channels": 2, "sessions": 3, "live_sessions": 1, "active_sessions": 2,
    }  # fmt: skip


# -- migrations ----------------------------------------------------------------------
LEGACY = sa.MetaData()
"""The schema the code made with ``create_all`` before migrations (git: before 0002)."""
sa.Table(
    "channel",
    LEGACY,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("slug", sa.String(63), nullable=False, index=True, unique=True),
    sa.Column("title", sa.String, nullable=False),
    sa.Column("stream_key_hash", sa.String(64), nullable=False, index=True, unique=True),
    sa.Column("key_rotated_at", sa.DateTime, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
sa.Table(
    "streamsession",
    LEGACY,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("channel_id", sa.Integer, sa.ForeignKey("channel.id"), nullable=False, index=True),
    sa.Column("state", sa.Enum("STARTING", "LIVE", "ENDED", name="sessionstate"), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("live_at", sa.DateTime),
    sa.Column("ended_at", sa.DateTime),
    sa.Column("segments", sa.Integer, nullable=False),
)
sa.Index("ix_streamsession_state", LEGACY.tables["streamsession"].c.state)


def _diffs(url: str, metadata: sa.MetaData) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return [
                diff
                for diff in compare_metadata(context, metadata)
                if not (diff[0] == "remove_table" and diff[1].name == "alembic_version")
            ]
    finally:
        engine.dispose()


def test_fresh_upgrade_matches_the_models_and_is_idempotent(url: str) -> None:
    assert migrate.current(url) is None
    if url.startswith("sqlite"):
        assert not Path(url.removeprefix("sqlite:///")).exists(), "status created the file"
    assert migrate.pending(url) == migrate.revisions() == ["0001", "0002", "0003", "0004", "0005"]
    assert migrate.upgrade(url) == ["0001", "0002", "0003", "0004", "0005"]
    assert migrate.current(url) == migrate.head() == "0005"
    assert _diffs(url, SQLModel.metadata) == []
    assert migrate.upgrade(url) == [] and migrate.pending(url) == []
    store = Store(url)
    assert store.applied_migrations == []
    store.close()


def test_initial_revision_is_the_legacy_schema(url: str) -> None:
    assert migrate.upgrade(url, "0001") == ["0001"]
    assert _diffs(url, LEGACY) == []


def test_downgrade_and_upgrade_again(url: str) -> None:
    store = Store(url)
    store.create_channel("news", tags=["x"])
    store.revoke_key("news")
    store.close()
    migrate.downgrade(url, "0001")
    assert migrate.current(url) == "0001"
    assert migrate.upgrade(url) == ["0002", "0003", "0004", "0005"]
    store = Store(url)
    assert store.get_channel("news").tags == []
    store.close()
    migrate.downgrade(url, "base")
    assert migrate.current(url) is None


def test_legacy_database_is_stamped_and_upgraded(url: str) -> None:
    created = datetime(2024, 5, 6, 7, 8, 9, 123_000)  # naive UTC, as the old code stored it
    key = "sk_legacy-key"
    engine = make_engine(url)
    LEGACY.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            LEGACY.tables["channel"].insert(),
            {"slug": "old", "title": "Old", "stream_key_hash": hash_stream_key(key),
             "key_rotated_at": created, "created_at": created},
        )  # fmt: skip
        connection.execute(
            LEGACY.tables["streamsession"].insert(),
            {"channel_id": 1, "state": "ENDED", "started_at": created, "segments": 4},
        )
    engine.dispose()
    assert migrate.current(url) == "0001" and migrate.pending(url) == [
        "0002",
        "0003",
        "0004",
        "0005",
    ]

    store = Store(url)
    assert store.applied_migrations == ["0002", "0003", "0004", "0005"]
    assert migrate.current(url) == "0005"
    channel = store.channel_for_key(key)
    assert channel is not None and (channel.slug, channel.title) == ("old", "Old")
    assert channel.created_at == channel.updated_at == created.replace(tzinfo=UTC)
    assert (channel.tags, channel.category, channel.price_per_second, channel.ladder) == (
        [], "", 0, None,
    )  # fmt: skip
    (stream, owner), *_ = store.history()
    assert (stream.state, stream.segments, stream.publisher, owner.slug) == ("ended", 4, "", "old")
    assert stream.started_at == created.replace(tzinfo=UTC)
    store.delete_channel("old")  # the foreign key cascades after the upgrade
    assert store.sessions() == []
    store.close()
    assert _diffs(url, SQLModel.metadata) == []


def test_url_forms() -> None:
    for given in ("postgresql://u:p@h/db", "postgres://u:p@h/db"):
        url = normalize_url(given)
        assert url.drivername == "postgresql+psycopg" and url.password == "p"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:////tmp/x.db").drivername == "sqlite"
    with pytest.raises(StoreError, match="in-memory"):
        Store("sqlite://")


# -- ss58 addresses ----------------------------------------------------------------------------
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"  # //Alice, format 42
ALICE_KEY = bytes.fromhex("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d")


def _corrupt(address: str, index: int) -> str:
    """``address`` with one base58 character changed (still base58, same length)."""
    char = address[index]
    return address[:index] + ("2" if char != "2" else "3") + address[index + 1 :]


def test_ss58_decodes_known_addresses_and_matches_substrate_interface() -> None:
    from vilokanam.store import ss58

    assert ss58.decode(ALICE) == (42, ALICE_KEY)
    keypair = pytest.importorskip("substrateinterface").Keypair
    for address_format in (0, 2, 42, 63, 64, 255, 7391, 16383):
        alice = keypair.create_from_uri("//Alice", ss58_format=address_format)
        assert ss58.decode(alice.ss58_address) == (address_format, ALICE_KEY), address_format
        assert ss58.encode(ALICE_KEY, address_format) == alice.ss58_address
    assert ss58.is_valid(ALICE, 42) and not ss58.is_valid(ALICE, 2)


@pytest.mark.parametrize(
    "address",
    [
        "1" * 47,  # base58, but a zero payload: no valid checksum
        _corrupt(ALICE, 10),  # one character of the key changed
        _corrupt(ALICE, len(ALICE) - 1),  # the checksum changed
        ALICE[:-1],  # truncated
        ALICE + "1",  # a byte too many
        "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQ0",  # 0 is not base58
        "",
        "x",
    ],
)
def test_ss58_refuses_corrupted_addresses(address: str) -> None:
    from vilokanam.store import ss58

    with pytest.raises(ValueError):
        ss58.decode(address)
    assert not ss58.is_valid(address)


def test_ss58_refuses_bad_prefixes_and_reserved_formats() -> None:
    from vilokanam.store import ss58

    for prefix in (b"\x80", b"\xff", b"\x2e"):  # prefix bytes >= 128; format 46 is reserved
        payload = prefix + ALICE_KEY
        checksum = hashlib.blake2b(b"SS58PRE" + payload, digest_size=64).digest()[:2]
        with pytest.raises(ValueError):
            ss58.decode(ss58.b58encode(payload + checksum))
    with pytest.raises(ValueError):
        ss58.encode(ALICE_KEY[:31])


def test_payout_and_viewer_addresses_are_checksum_validated(store: Store) -> None:
    store.create_channel("news", "News")
    assert store.update_channel("news", payout_address=f" {ALICE} ").payout_address == ALICE
    for bad in ("1" * 47, _corrupt(ALICE, 20), "0OIl"):
        with pytest.raises(InvalidField) as info:
            store.update_channel("news", payout_address=bad)
        assert info.value.field == "payout_address" and "ss58" in str(info.value)
        with pytest.raises(InvalidField) as info:
            store.create_viewer("vera", address=bad)
        assert info.value.field == "address" and "ss58" in str(info.value)
    assert store.get_channel("news").payout_address == ALICE
    viewer, _ = store.create_viewer("vera", address=ALICE)
    assert viewer.address == ALICE
