"""Outgoing hooks: signed webhooks (durable outbox + background delivery), publish auth hook."""

from vilokanam.hooks.outbox import enqueue_event
from vilokanam.hooks.signing import sign, verify

__all__ = ["enqueue_event", "sign", "verify"]
