"""Segment boundaries on the source timeline, chosen once per stream. Pure.

Targets lie at ``t0 + k * duration`` (``t0`` = the first keyframe). Each boundary is the first
source keyframe at or after a target, so the source rung can cut there too and every transcoded
rung forces an IDR on exactly that frame. A keyframe can end only one target: with a keyframe
interval longer than the segment duration some targets fall inside a GOP and are skipped.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from fractions import Fraction


class BoundaryPlanner:
    """Fed keyframe times in decode order; decides which ones start a segment."""

    def __init__(self, segment_duration: Fraction) -> None:
        if segment_duration <= 0:
            raise ValueError("segment duration must be positive")
        self.segment_duration = Fraction(segment_duration)
        self.boundaries: list[Fraction] = []
        self.next_target: Fraction | None = None
        self.longest_gop = Fraction(0)
        self._last_keyframe: Fraction | None = None

    @property
    def t0(self) -> Fraction | None:
        return self.boundaries[0] if self.boundaries else None

    def offer(self, time: Fraction) -> bool:
        """A source keyframe at ``time``; True when it starts a new segment."""
        last = self._last_keyframe
        if last is not None and time > last:
            self.longest_gop = max(self.longest_gop, time - last)
        if last is None or time > last:
            self._last_keyframe = time
        if not self.boundaries:
            self.boundaries.append(time)
            self.next_target = time + self.segment_duration
            return True
        assert self.next_target is not None
        if time < self.next_target or time <= self.boundaries[-1]:
            return False
        self.boundaries.append(time)
        elapsed = math.floor((time - self.boundaries[0]) / self.segment_duration)
        self.next_target = self.boundaries[0] + (elapsed + 1) * self.segment_duration
        return True

    def index_of(self, time: Fraction) -> int:
        """Index of the known segment that contains ``time`` (0 for times before ``t0``)."""
        return max(0, bisect.bisect_right(self.boundaries, time) - 1)

    def is_boundary(self, time: Fraction) -> bool:
        index = bisect.bisect_left(self.boundaries, time)
        return index < len(self.boundaries) and self.boundaries[index] == time


def select_boundaries(keyframes: Iterable[Fraction], segment_duration: Fraction) -> list[Fraction]:
    """The boundaries a stream with these keyframe times (in decode order) gets."""
    planner = BoundaryPlanner(segment_duration)
    for time in keyframes:
        planner.offer(time)
    return planner.boundaries
