"""Alembic migrations of the store's schema; run them with ``vilokanam.store.migrate``."""
