"""Segment fetches → watched time → whole-second ticks, per (viewer, stream session).

Pure and synchronous: no I/O and no clock of its own (each :class:`Fetch` carries its wall time),
so it can be driven by the origin, by CDN access logs, or by property tests alike.

Rules, in integer milliseconds:

* a media sequence number is credited once per (viewer, session), whatever the rendition: ABR
  switches and retries are free;
* **the cap**: the content credited never exceeds the wall time since the viewer's first fetch
  plus one target duration. Content fetched ahead of that waits (``pending_ms``) and is credited
  as wall time passes, on the viewer's next fetch of a segment or playlist (:meth:`release`):
  prefetching cannot bill ahead, a player that bursts segments at start-up and keeps watching
  pays for all of them, and one that leaves right after a burst pays for no more than its time;
* the first fetch is the first one fed, except that a fetch known to have happened earlier (a
  CDN log line read late: :meth:`Tracker.backdate`) lowers it, which makes room under the cap
  for what waits; fed so, any order of the same fetches credits the same once released at the
  latest time. (The origin's fetch times are its clock *now*: a time going back there is the
  clock stepping, which must not lift the cap.)
* the first ``free_preview`` seconds of content credited are not billed;
* fractions are carried: ticks due = (content - preview) // 1000; e.g. three 1.5 s segments
  make 4 ticks with 0.5 s carried.

``content_ms`` counts all content credited, the preview included, so a restored state (see
:meth:`Tracker.restore`) behaves exactly as the uninterrupted one.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

MAX_SEGMENT = 3600.0
"""Longest segment duration taken at face value (seconds); longer, NaN or ≤ 0 credit nothing."""

Key = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Fetch:
    """One valid segment fetch: who, which stream session, which media sequence, how long, when."""

    viewer_id: int
    session_id: int
    sequence: int
    duration: float
    """Seconds of content in the segment."""
    at: float
    """Wall-clock seconds (``time.time()``) of the fetch."""


@dataclass(frozen=True, slots=True)
class Due:
    """A (viewer, session) whose state changed since it was last saved: ticks ``ticks_from`` up
    to ``ticks_to`` are to be posted (none when equal: only the state is to be saved)."""

    viewer_id: int
    session_id: int
    ticks_from: int
    ticks_to: int
    content_ms: int
    sequences: list[list[int]]
    first_fetch_at: float
    version: int = 0
    """The state's version when this was taken; ``mark_posted`` with it leaves newer changes
    pending."""
    pending_ms: int = 0
    """Content fetched but not yet credited (ahead of the wall-clock cap)."""

    @property
    def ticks(self) -> int:
        return self.ticks_to - self.ticks_from


class _Watch:
    """One (viewer, session); the sequences credited are ranges ``starts[i]..ends[i]``."""

    __slots__ = (
        "content_ms",
        "due",
        "ends",
        "first_ms",
        "last_ms",
        "pending_ms",
        "posted",
        "starts",
        "version",
    )

    def __init__(self, first_ms: int) -> None:
        self.first_ms = first_ms
        self.last_ms = first_ms
        self.content_ms = 0
        self.pending_ms = 0  # fetched ahead of the cap, credited as wall time passes
        self.due = 0  # whole ticks the content makes due
        self.posted = 0  # ticks accounted for (posted to the ledger, or written off)
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.version = 0

    def add(self, sequence: int) -> bool:
        """Record ``sequence``; False if it was already credited."""
        starts, ends = self.starts, self.ends
        index = bisect_right(starts, sequence)
        if index and ends[index - 1] >= sequence:
            return False
        joins_left = index > 0 and ends[index - 1] == sequence - 1
        joins_right = index < len(starts) and starts[index] == sequence + 1
        if joins_left and joins_right:
            ends[index - 1] = ends[index]
            del starts[index], ends[index]
        elif joins_left:
            ends[index - 1] = sequence
        elif joins_right:
            starts[index] = sequence
        else:
            starts.insert(index, sequence)
            ends.insert(index, sequence)
        return True

    def ranges(self) -> list[list[int]]:
        return [[start, end] for start, end in zip(self.starts, self.ends, strict=True)]


class Tracker:
    """Turns fetches into ticks; remembers what was credited and what is not yet posted."""

    def __init__(self, target_duration: float, free_preview: float = 0.0) -> None:
        if not target_duration > 0:
            raise ValueError(f"target_duration must be > 0, got {target_duration!r}")
        if not free_preview >= 0:
            raise ValueError(f"free_preview must be >= 0, got {free_preview!r}")
        self.target_ms = round(target_duration * 1000)
        self.preview_ms = round(free_preview * 1000)
        self._watches: dict[Key, _Watch] = {}
        self._dirty: set[Key] = set()

    def __len__(self) -> int:
        return len(self._watches)

    def __contains__(self, key: Key) -> bool:
        return key in self._watches

    def note(self, fetch: Fetch) -> int:
        """Credit one fetch; returns the whole new ticks it made due (0: repeat, capped, preview,
        or a fraction carried)."""
        key = (fetch.viewer_id, fetch.session_id)
        at_ms = round(fetch.at * 1000)
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(at_ms)
        elif at_ms > watch.last_ms:
            watch.last_ms = at_ms
        sequence = fetch.sequence
        ends = watch.ends
        if ends and sequence == ends[-1] + 1:  # the common case: the next segment
            ends[-1] = sequence
        elif (ends and watch.starts[-1] <= sequence <= ends[-1]) or not watch.add(sequence):
            # A retry, or the same sequence in another rendition: nothing new to credit, but
            # the viewer is still there, so content waiting under the cap may be credited.
            return self.release(fetch.viewer_id, fetch.session_id, fetch.at)
        watch.version += 1
        self._dirty.add(key)
        duration = fetch.duration
        if not 0.0 < duration <= MAX_SEGMENT:  # also refuses NaN
            return 0
        watch.pending_ms += round(duration * 1000)
        return self._credit(watch, at_ms)

    def backdate(self, viewer_id: int, session_id: int, at: float) -> None:
        """The viewer fetched at ``at`` (a CDN log line, read in any order): if that is before
        its first fetch, it becomes the first (saved with the state). Nothing is credited here:
        :meth:`release` at a later time credits what the wider cap now allows."""
        key = (viewer_id, session_id)
        watch = self._watches.get(key)
        at_ms = round(at * 1000)
        if watch is None or not at_ms < watch.first_ms:
            return
        watch.first_ms = at_ms
        watch.version += 1
        self._dirty.add(key)

    def release(self, viewer_id: int, session_id: int, at: float) -> int:
        """The viewer is still watching at ``at`` (it fetched a playlist): credit content it
        fetched ahead as far as the cap now allows. Returns the whole new ticks due."""
        key = (viewer_id, session_id)
        watch = self._watches.get(key)
        if watch is None or not watch.pending_ms:
            return 0
        at_ms = round(at * 1000)
        watch.last_ms = max(watch.last_ms, at_ms)
        before = watch.content_ms
        new = self._credit(watch, at_ms)
        if watch.content_ms != before:
            watch.version += 1
            self._dirty.add(key)
        return new

    def _credit(self, watch: _Watch, at_ms: int) -> int:
        room = at_ms - watch.first_ms + self.target_ms - watch.content_ms
        credit = min(watch.pending_ms, room)
        if credit <= 0:
            return 0
        watch.content_ms += credit
        watch.pending_ms -= credit
        due = (watch.content_ms - self.preview_ms) // 1000
        if due <= watch.due:
            return 0
        new, watch.due = due - watch.due, due
        return new

    def restore(
        self,
        viewer_id: int,
        session_id: int,
        *,
        first_fetch_at: float,
        content_ms: int,
        ticks: int,
        sequences: list[list[int]],
        pending_ms: int = 0,
    ) -> None:
        """Put back a saved state (``ticks`` already accounted for); replaces what is in memory.
        The last fetch was at least as late as the content credited says (the cap)."""
        watch = _Watch(round(first_fetch_at * 1000))
        watch.last_ms = max(watch.first_ms, watch.first_ms + content_ms - self.target_ms)
        watch.content_ms = content_ms
        watch.pending_ms = pending_ms
        watch.posted = ticks
        watch.due = max(ticks, (content_ms - self.preview_ms) // 1000)
        for start, end in sorted(sequences):
            if watch.ends and start <= watch.ends[-1] + 1:
                watch.ends[-1] = max(watch.ends[-1], end)
            else:
                watch.starts.append(start)
                watch.ends.append(end)
        key = (viewer_id, session_id)
        self._watches[key] = watch
        if watch.due > watch.posted:
            self._dirty.add(key)
        else:
            self._dirty.discard(key)

    def pending(self) -> list[Due]:
        """Every (viewer, session) changed since it was last marked posted."""
        return [self._due(key, self._watches[key]) for key in self._dirty]

    def state(self, viewer_id: int, session_id: int) -> Due | None:
        """The current state of one (viewer, session), saved or not; None if unknown."""
        key = (viewer_id, session_id)
        watch = self._watches.get(key)
        return None if watch is None else self._due(key, watch)

    @staticmethod
    def _due(key: Key, watch: _Watch) -> Due:
        return Due(
            key[0],
            key[1],
            watch.posted,
            watch.due,
            watch.content_ms,
            watch.ranges(),
            watch.first_ms / 1000,
            watch.version,
            watch.pending_ms,
        )

    def mark_posted(
        self, viewer_id: int, session_id: int, ticks_to: int, *, version: int | None = None
    ) -> None:
        """Ticks up to ``ticks_to`` are accounted for (posted, or written off when the balance
        could not pay them). With the ``version`` of the :class:`Due`, later changes stay
        pending; without it the state counts as saved."""
        key = (viewer_id, session_id)
        watch = self._watches.get(key)
        if watch is None:
            return
        watch.posted = max(watch.posted, ticks_to)
        watch.due = max(watch.due, watch.posted)
        if version is None or version == watch.version:
            self._dirty.discard(key)

    def last_seen(self, viewer_id: int, session_id: int) -> float | None:
        """Wall seconds of the viewer's latest fetch known (after a restore: the earliest time
        the content credited allows); None if unknown."""
        watch = self._watches.get((viewer_id, session_id))
        return None if watch is None else watch.last_ms / 1000

    def unposted(self, viewer_id: int, session_id: int) -> int:
        """Ticks due and not yet accounted for."""
        watch = self._watches.get((viewer_id, session_id))
        return 0 if watch is None else watch.due - watch.posted

    def totals(self, viewer_id: int, session_id: int) -> tuple[int, int] | None:
        """``(ticks due, ticks accounted for)`` or None if unknown."""
        watch = self._watches.get((viewer_id, session_id))
        return None if watch is None else (watch.due, watch.posted)

    def evict_idle(self, before: float) -> list[Key]:
        """Forget saved states whose last fetch is older than ``before`` (wall seconds); they are
        restored from the store if the viewer comes back. Returns the keys dropped."""
        limit = round(before * 1000)
        idle = [
            key
            for key, watch in self._watches.items()
            if watch.last_ms < limit and key not in self._dirty
        ]
        for key in idle:
            del self._watches[key]
        return idle
