"""The webhook outbox: an event becomes one ``webhook_delivery`` row per subscribed endpoint.

Rows are written in the database, so an event raised by the CLI (on the same database) or just
before a crash is still delivered by the server's dispatcher. The functions here are the
outbox's only queries; they are synchronous (the dispatcher runs them in a thread).

A dispatcher *claims* a due row by moving its ``next_attempt_at`` past the end of the request
(a lease): another dispatcher on the same database skips it, and a crash mid-request makes it due
again once the lease ends (at-least-once delivery; receivers de-duplicate on the event id).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, func, select

from vilokanam.config import Settings
from vilokanam.store import Store
from vilokanam.store.models import DeliveryState, WebhookDelivery, utcnow


def event_body(event: str, event_id: str, data: dict[str, Any]) -> str:
    """The JSON text that is signed and POSTed."""
    payload = {"id": event_id, "type": event, "created_at": utcnow().isoformat(), "data": data}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)


def subscribed(settings: Settings, event: str) -> bool:
    """Whether any configured endpoint wants ``event``."""
    return any(event in endpoint.events for endpoint in settings.webhooks.endpoints)


def enqueue_event(store: Store, settings: Settings, event: str, data: dict[str, Any]) -> str:
    """Queue ``event`` for every endpoint subscribed to it; returns the event id."""
    event_id = uuid.uuid4().hex
    endpoints = [e for e in settings.webhooks.endpoints if event in e.events]
    if not endpoints:
        return event_id
    body = event_body(event, event_id, data)
    with store.session() as db:
        for endpoint in endpoints:
            db.add(WebhookDelivery(event_id=event_id, event=event, url=endpoint.url, body=body))
        db.commit()
    return event_id


@dataclass(frozen=True)
class Claimed:
    """A delivery row taken by a dispatcher for one attempt (a plain copy, no DB session)."""

    id: int
    event_id: str
    event: str
    url: str
    body: str
    attempts: int
    """Attempts made before this one."""


def claim_due(
    store: Store,
    *,
    limit: int,
    per_url: int,
    busy: Mapping[str, int],
    lease: float,
    now: datetime | None = None,
) -> list[Claimed]:
    """Claim up to ``limit`` due pending rows, at most ``per_url`` per URL counting the ``busy``
    requests already in flight; each is leased for ``lease`` seconds.

    URLs are served in the order of their oldest due row, and each URL's rows oldest first.
    Rows are picked per URL, so a backlog for one (dead) endpoint never hides another's rows.
    """
    if limit <= 0:
        return []
    now = now or utcnow()
    full = sorted(url for url, count in busy.items() if count >= per_url)
    due = (
        select(WebhookDelivery.url, func.min(WebhookDelivery.next_attempt_at))
        .where(WebhookDelivery.state == DeliveryState.PENDING)
        .where(WebhookDelivery.next_attempt_at <= now)
        .group_by(col(WebhookDelivery.url))
        .order_by(func.min(WebhookDelivery.next_attempt_at), col(WebhookDelivery.url))
    )
    if full:
        due = due.where(col(WebhookDelivery.url).not_in(full))
    claimed: list[Claimed] = []
    with store.session() as db:
        for url, _oldest in db.exec(due).all():
            room = min(per_url - busy.get(url, 0), limit - len(claimed))
            if room <= 0:
                continue
            rows = db.exec(
                select(WebhookDelivery)
                .where(WebhookDelivery.state == DeliveryState.PENDING)
                .where(WebhookDelivery.next_attempt_at <= now)
                .where(WebhookDelivery.url == url)
                .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
                .limit(room)
                .with_for_update(skip_locked=True)  # PostgreSQL: two servers never take one row
            ).all()
            for row in rows:
                assert row.id is not None
                claimed.append(
                    Claimed(row.id, row.event_id, row.event, row.url, row.body, row.attempts)
                )
                row.next_attempt_at = now + timedelta(seconds=lease)
                db.add(row)
            if len(claimed) >= limit:
                break
        db.commit()
    return claimed


def mark_delivered(store: Store, delivery_id: int) -> None:
    """The endpoint answered 2xx."""
    with store.session() as db:
        row = db.get(WebhookDelivery, delivery_id)
        if row is None:
            return
        now = utcnow()
        row.attempts += 1
        row.state = DeliveryState.DELIVERED
        row.delivered_at = now
        row.next_attempt_at = now
        row.last_error = None
        db.add(row)
        db.commit()


def mark_attempt_failed(
    store: Store, delivery_id: int, error: str, *, max_attempts: int, retry_in: float
) -> tuple[DeliveryState, int]:
    """Count a failed attempt: pending again in ``retry_in`` s, or failed after the last one.

    Returns the row's new state and its attempt count.
    """
    with store.session() as db:
        row = db.get(WebhookDelivery, delivery_id)
        if row is None:
            return DeliveryState.FAILED, 0
        row.attempts += 1
        row.last_error = error[:1000]
        if row.attempts >= max_attempts:
            row.state = DeliveryState.FAILED
        else:
            row.next_attempt_at = utcnow() + timedelta(seconds=retry_in)
        db.add(row)
        db.commit()
        return row.state, row.attempts


def release(store: Store, delivery_ids: list[int]) -> None:
    """Make claimed rows due now without counting an attempt (a shutdown interrupted them)."""
    if not delivery_ids:
        return
    now = utcnow()
    with store.session() as db:
        rows = db.exec(select(WebhookDelivery).where(col(WebhookDelivery.id).in_(delivery_ids)))
        for row in rows:
            if row.state == DeliveryState.PENDING:
                row.next_attempt_at = now
                db.add(row)
        db.commit()


def prune(store: Store, older_than: datetime) -> int:
    """Delete delivered and failed rows created before ``older_than``; pending ones stay."""
    with store.session() as db:
        rows = list(
            db.exec(
                select(WebhookDelivery)
                .where(col(WebhookDelivery.state) != DeliveryState.PENDING)
                .where(col(WebhookDelivery.created_at) < older_than)
            )
        )
        for row in rows:
            db.delete(row)
        db.commit()
    return len(rows)
