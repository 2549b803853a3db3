"""The webhook outbox's claim query: per-URL limits without head-of-line blocking."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from vilokanam.hooks import outbox
from vilokanam.store import Store, migrate
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
