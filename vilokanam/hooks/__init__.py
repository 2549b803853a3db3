"""Outgoing hooks: signed webhooks (durable outbox + background delivery), publish auth hook."""

from vilokanam.hooks.outbox import enqueue_event

__all__ = ["enqueue_event"]
