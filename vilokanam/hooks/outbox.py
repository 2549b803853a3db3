"""The webhook outbox: an event becomes one ``webhook_delivery`` row per subscribed endpoint.

Rows are written in the database, so an event raised by the CLI (on the same database) or just
before a crash is still delivered by the server's dispatcher.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from vilokanam.config import Settings
from vilokanam.store import Store
from vilokanam.store.models import WebhookDelivery, utcnow


def event_body(event: str, event_id: str, data: dict[str, Any]) -> str:
    """The JSON text that is signed and POSTed."""
    payload = {"id": event_id, "type": event, "created_at": utcnow().isoformat(), "data": data}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)


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
