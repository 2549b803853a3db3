"""The webhook outbox: the claim query's per-URL limits without head-of-line blocking, and the
coalescing that keeps rejected publishes from growing it without bound."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from vilokanam.hooks import outbox
from vilokanam.hooks.dispatcher import WebhookDispatcher
from vilokanam.hooks.events import PUBLISH_REJECTED, WebhookEvents
from vilokanam.store import Channel, Store, migrate
from vilokanam.store.models import WebhookDelivery, utcnow

DEAD = "http://dead/"
GOOD = "http://good/"
OTHER = "http://other/"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store at the head revision on each backend."""
    if request.param == "postgresql":
        url = str(request.getfixturevalue("postgres_db_url"))
        migrate.upgrade(url)
    else:
        url = f"sqlite:///{tmp_path}/x.db"
    store = Store(url)
    yield store
    store.close()


def add_rows(store: Store, url: str, count: int, *, age: float = 60.0) -> None:
    """``count`` pending rows for ``url``, due since ``age`` seconds (older first by id)."""
    due = utcnow() - timedelta(seconds=age)
    with store.session() as db:
        for n in range(count):
            db.add(
                WebhookDelivery(
                    event_id=f"{url}{n}",
                    event="stream.started",
                    url=url,
                    body="{}",
                    next_attempt_at=due + timedelta(milliseconds=n),
                )
            )
        db.commit()


def claim(store: Store, busy: dict[str, int], *, limit: int = 6) -> list[outbox.Claimed]:
    return outbox.claim_due(store, limit=limit, per_url=2, busy=busy, lease=30.0)


def test_a_dead_endpoint_backlog_does_not_block_a_healthy_one(store: Store) -> None:
    add_rows(store, DEAD, 100, age=120.0)  # all older than the healthy endpoint's row
    add_rows(store, GOOD, 1)
    claimed = claim(store, {DEAD: 2})
    assert [(job.url, job.event_id) for job in claimed] == [(GOOD, f"{GOOD}0")]


def test_per_url_slots_count_the_busy_ones_and_oldest_comes_first(store: Store) -> None:
    add_rows(store, DEAD, 100, age=120.0)
    add_rows(store, GOOD, 5, age=90.0)
    add_rows(store, OTHER, 5)
    claimed = claim(store, {DEAD: 1})
    assert [job.event_id for job in claimed] == [
        f"{DEAD}0",  # one free slot left for the busy URL
        f"{GOOD}0",
        f"{GOOD}1",
        f"{OTHER}0",
        f"{OTHER}1",
    ]
    # Claimed rows are leased: the next pass (same requests still in flight) takes the rest.
    again = claim(store, {DEAD: 2, GOOD: 2, OTHER: 2})
    assert again == []
    assert [job.event_id for job in claim(store, {DEAD: 2, OTHER: 2})] == [f"{GOOD}2", f"{GOOD}3"]


def test_the_limit_caps_the_claim_across_urls(store: Store) -> None:
    add_rows(store, DEAD, 10, age=120.0)
    add_rows(store, GOOD, 10)
    claimed = claim(store, {}, limit=3)
    assert [job.event_id for job in claimed] == [f"{DEAD}0", f"{DEAD}1", f"{GOOD}0"]
    assert claim(store, {}, limit=0) == []


def test_rows_not_yet_due_are_left(store: Store) -> None:
    add_rows(store, GOOD, 2, age=-60.0)  # due in a minute
    assert claim(store, {}) == []


# -- stream.publish_rejected coalescing -----------------------------------------


class FakeDispatcher:
    """Records what would be queued."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def submit(self, event: str, data: dict[str, Any]) -> None:
        self.sent.append((event, data))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def events_with(clock: FakeClock, **options: Any) -> tuple[WebhookEvents, FakeDispatcher]:
    dispatcher = FakeDispatcher()
    events = WebhookEvents(cast(WebhookDispatcher, dispatcher), clock=clock, **options)
    return events, dispatcher


BAD_KEY = "unknown or revoked stream key"


def test_repeated_rejections_are_coalesced_and_counted() -> None:
    clock = FakeClock()
    events, dispatcher = events_with(clock)
    for port in range(50000, 50100):  # a bot guessing keys from one IP, new connection each time
        events.publish_rejected(f"203.0.113.5:{port}", BAD_KEY, None)
        clock.now += 0.1
    assert len(dispatcher.sent) == 1
    event, data = dispatcher.sent[0]
    assert event == PUBLISH_REJECTED
    assert data["peer"] == "203.0.113.5:50000" and data["suppressed"] == 0

    clock.now += 60.0  # the window is over: the next one is sent with the count
    events.publish_rejected("203.0.113.5:50200", BAD_KEY, None)
    assert len(dispatcher.sent) == 2
    assert dispatcher.sent[1][1]["suppressed"] == 99
    events.publish_rejected("203.0.113.5:50201", BAD_KEY, None)
    assert len(dispatcher.sent) == 2, "a new window began with the event just sent"


def test_other_ips_channels_and_reasons_are_not_held_back() -> None:
    clock = FakeClock()
    events, dispatcher = events_with(clock)
    gated = Channel(id=7, slug="gated")
    events.publish_rejected("203.0.113.5:1", BAD_KEY, None)
    events.publish_rejected("203.0.113.6:1", BAD_KEY, None)
    events.publish_rejected("[2001:db8::1]:1", BAD_KEY, None)
    events.publish_rejected("203.0.113.5:2", "publish refused (HTTP 403)", gated)
    events.publish_rejected("203.0.113.5:3", "channel is already live", gated)
    events.publish_rejected("203.0.113.5:4", BAD_KEY, None)  # a repeat of the first
    assert [data["peer"] for _, data in dispatcher.sent] == [
        "203.0.113.5:1",
        "203.0.113.6:1",
        "[2001:db8::1]:1",
        "203.0.113.5:2",
        "203.0.113.5:3",
    ]
    assert dispatcher.sent[3][1]["channel"] == "gated" and dispatcher.sent[3][1]["channel_id"] == 7


def test_the_coalescing_memory_is_bounded() -> None:
    clock = FakeClock()
    events, dispatcher = events_with(clock, rejected_keys=3)
    for n in range(10):
        events.publish_rejected(f"198.51.100.{n}:1", BAD_KEY, None)
    assert len(events._rejections) == 3
    assert len(dispatcher.sent) == 10
    events.publish_rejected("198.51.100.9:2", BAD_KEY, None)  # still remembered: held back
    events.publish_rejected("198.51.100.0:2", BAD_KEY, None)  # forgotten: sent again
    assert len(dispatcher.sent) == 11
