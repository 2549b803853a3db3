"""How far each CDN log file was read (table ``log_cursor``), so a re-run resumes after it.

A file is known by ``{digest}:{name}``: the digest (of its first line) recognises it under
another name (``access.log`` rotated to ``access.log.1``), the name keeps two files with the
same first line apart. Blocking store calls: run them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import col, select

from vilokanam.store import Store
from vilokanam.store.models import LogCursor, utcnow

MAX_SOURCE = 255


def source_key(digest: str, name: str) -> str:
    """The cursor key of a file: its first-line digest and (the end of) its name."""
    key = f"{digest}:{name}"
    return key if len(key) <= MAX_SOURCE else key[: len(digest) + 1] + name[-(MAX_SOURCE - 33) :]


@dataclass(frozen=True, slots=True)
class CursorState:
    source: str
    offset: int = 0
    """Bytes of the (uncompressed) file read and fed, at a line end."""
    lines: int = 0
    fetches: int = 0
    renamed_from: str | None = None
    """The cursor of the same file under another name that this one resumes from."""


def find(store: Store, source: str) -> CursorState:
    """The cursor of ``source``; else the furthest one of a file with the same first line
    (renamed or rotated); else a fresh one at offset 0."""
    digest = source.split(":", 1)[0]
    with store.session() as db:
        row = db.get(LogCursor, source)
        if row is not None:
            return CursorState(source, row.offset, row.lines, row.fetches)
        same = db.exec(
            select(LogCursor)
            .where(col(LogCursor.source).startswith(f"{digest}:", autoescape=True))
            .order_by(col(LogCursor.offset).desc())
        ).first()
    if same is None:
        return CursorState(source)
    return CursorState(source, same.offset, same.lines, same.fetches, renamed_from=same.source)


def _get(store: Store, source: str) -> LogCursor | None:
    with store.session() as db:
        return db.get(LogCursor, source)


def advance(
    store: Store, source: str, start: int, end: int, lines: int, fetches: int
) -> CursorState:
    """Record that ``source`` was read from ``start`` to ``end`` (``lines`` lines, ``fetches``
    segment requests). A read from 0 restarts the totals (a truncated file read again)."""
    if start > 0 and _get(store, source) is None:  # resumed from a renamed file's cursor
        seed = find(store, source)
        lines, fetches = seed.lines + lines, seed.fetches + fetches
        start = 0
    with store.session() as db:
        row = db.get(LogCursor, source)
        if row is None:
            row = LogCursor(source=source)
        if start == 0:
            row.lines, row.fetches = lines, fetches
        else:
            row.lines += lines
            row.fetches += fetches
        row.offset = end
        row.updated_at = utcnow()
        db.add(row)
        db.commit()
        return CursorState(source, row.offset, row.lines, row.fetches)
