"""Throughput figures for ``stats`` events: frames, frames/s and media seconds per wall second."""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any


class Stats:
    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.frames = 0
        self.media_time: Fraction | None = None
        now = time.monotonic()
        self._mark: tuple[float, int, Fraction | None] = (now, 0, None)
        self._first: Fraction = Fraction(0)

    def progress(self, media_time: Fraction | None) -> None:
        """The media time reached so far."""
        if media_time is None:
            return
        if self.media_time is None:
            self._first = media_time
        self.media_time = media_time

    def due(self, force: bool = False) -> dict[str, Any] | None:
        """The figures since the last report, when ``interval`` seconds have passed."""
        now = time.monotonic()
        then, frames, media = self._mark
        elapsed = now - then
        if elapsed <= 0 or (elapsed < self.interval and not force):
            return None
        progress = 0.0
        if self.media_time is not None:
            progress = float(self.media_time - (media if media is not None else self._first))
        self._mark = (now, self.frames, self.media_time)
        return {
            "frames": self.frames,
            "fps": round((self.frames - frames) / elapsed, 2),
            "speed": round(progress / elapsed, 3),
        }
