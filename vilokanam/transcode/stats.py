"""Throughput figures for ``stats`` events: frames, frames/s and media seconds per wall second.

One :class:`Throughput` per producer: the main thread's demuxed source video (the totals, and the
``source`` rendition's packet rate) and each rung's encoder thread. Only its own thread writes a
meter; the reporting thread reads it (a reading one frame stale is harmless).
"""

from __future__ import annotations

import time
from typing import Any


class Throughput:
    """Frames handled and media time reached by one producer."""

    __slots__ = ("_first", "_mark", "frames", "media_time")

    def __init__(self, now: float | None = None) -> None:
        self.frames = 0
        self.media_time: float | None = None
        """Media seconds reached (the end of the latest frame or packet)."""
        self._first: float | None = None
        self._mark: tuple[float, int, float | None] = (
            time.monotonic() if now is None else now,
            0,
            None,
        )

    def add(self, frames: int, media_time: float | None) -> None:
        """``frames`` more done, reaching ``media_time`` seconds (None: unknown, keep)."""
        self.frames += frames
        self.progress(media_time)

    def progress(self, media_time: float | None) -> None:
        if media_time is None:
            return
        if self._first is None:
            self._first = media_time
        self.media_time = media_time

    def figures(self, now: float) -> dict[str, Any]:
        """Frames, fps and speed (media s per wall s) since the previous call; starts anew."""
        then, frames, media = self._mark
        elapsed = max(now - then, 1e-9)
        progress = 0.0
        if self.media_time is not None:
            since = media if media is not None else self._first
            progress = self.media_time - (since if since is not None else self.media_time)
        self._mark = (now, self.frames, self.media_time)
        return {
            "frames": self.frames,
            "fps": round((self.frames - frames) / elapsed, 2),
            "speed": round(progress / elapsed, 3),
        }


class Stats:
    """The worker's figures: totals on the source timeline plus one entry per rendition."""

    def __init__(self, interval: float = 5.0, now: float | None = None) -> None:
        self.interval = interval
        self._last = time.monotonic() if now is None else now
        self.total = Throughput(self._last)
        self.rungs: dict[str, Throughput] = {}

    @property
    def frames(self) -> int:
        return self.total.frames

    @frames.setter
    def frames(self, value: int) -> None:
        self.total.frames = value

    @property
    def media_time(self) -> float | None:
        return self.total.media_time

    def progress(self, media_time: Any) -> None:
        """The source media time reached so far (seconds; a Fraction is fine)."""
        self.total.progress(None if media_time is None else float(media_time))

    def track(self, name: str, meter: Throughput) -> None:
        """Report ``meter`` as rendition ``name`` (the source rendition may share ``total``)."""
        self.rungs[name] = meter

    def due(self, force: bool = False, now: float | None = None) -> dict[str, Any] | None:
        """The figures since the last report, when ``interval`` seconds have passed.

        ``{"frames", "fps", "speed", "rungs": {name: {"frames", "fps", "speed"}}}``.
        """
        now = time.monotonic() if now is None else now
        elapsed = now - self._last
        if elapsed <= 0 or (elapsed < self.interval and not force):
            return None
        self._last = now
        totals = self.total.figures(now)
        rungs = {
            name: dict(totals) if meter is self.total else meter.figures(now)
            for name, meter in self.rungs.items()
        }
        return {**totals, "rungs": rungs}
